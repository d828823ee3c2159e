() => {
  /* Cancel's browser side: while a run is going (its status is neither empty nor a last
     word), say at once that it stops after the current step. The server's reply carries no
     text, so it can never arrive after the run's own last message and hide it. */
  const root = document.querySelector('#progress');
  const box = root && (root.querySelector('.prose') || root);
  const now = box ? box.innerText.trim() : '';
  if (!now || /^Done\.|cancelled|stopped|✖/.test(now)) return;
  box.textContent = 'Cancelling: the run stops after the current step…';
}

() => {
  /* Ctrl+Enter (Cmd+Enter on a Mac) anywhere on the page generates, as in most image tools:
     the same click as the button, so a run the page would refuse is refused the same way. */
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey) || e.repeat) return;
    const button = document.querySelector('#generate');
    if (!button || button.disabled || button.offsetParent === null) return;
    e.preventDefault();
    button.click();
  });
}

/* An insert button's `js`: runs in the browser before the handler, and passes it the prompt
   and the caret's place in it, so [k] goes where the user was typing. */
(prompt, cursor) => {
  const box = document.querySelector('#prompt textarea');
  return [prompt, box ? box.selectionStart : prompt.length];
}

() => {
  /* A file dropped on a slot that shows an image goes where the slot's file picker sends it.
     gradio's own drop handler there empties the slot first, then drops a file of the wrong
     type without a word, so the user's image was lost. Through the picker a wrong type gets
     gradio's notice and the image stays; a file our reader refuses leaves it as it was too.
     dragover is taken as well, so gradio's drop highlight is never left on; ours is a class. */
  const slot = (e) => {
    const block = e.target instanceof Element ? e.target.closest('[id^="slot-"]') : null;
    if (!block || !/^slot-\d+-image$/.test(block.id) || !block.querySelector('img')) return null;
    return block;
  };
  const mark = (block, on) => block.classList.toggle('sigma-drop-here', on);
  document.addEventListener('dragover', (e) => {
    const block = slot(e);
    if (!block) return;
    e.preventDefault();
    e.stopPropagation();
    if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
    mark(block, true);
  }, true);
  document.addEventListener('dragleave', (e) => {
    const block = slot(e);
    if (block && !block.contains(e.relatedTarget)) mark(block, false);
  }, true);
  document.addEventListener('drop', (e) => {
    const block = slot(e);
    if (!block) return;
    e.preventDefault();
    e.stopPropagation();
    mark(block, false);
    const input = block.querySelector('input[type=file]');
    if (!input || !e.dataTransfer || !e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  }, true);
}

() => {
  /* Files dragged onto the page (run on load). A file dropped anywhere on a slot's card goes
     where the slot's file picker sends it: gradio's own drop handler on a slot that shows an
     image empties it first, then drops a file of the wrong type without a word (the image was
     lost), and the rest of the card took no drop at all. Through the picker a wrong type gets
     gradio's notice and the image stays; a file our reader refuses leaves it as it was too.
     A file dropped outside every card and upload area is refused, where the browser would
     otherwise leave the studio to open the file. Drags of text (the strip's reorder) pass. */
  const carriesFiles = (e) => !!e.dataTransfer && [...e.dataTransfer.types].includes('Files');
  const slotOf = (e) => {
    const card = e.target instanceof Element ? e.target.closest('.sigma-card[id^="slot-"]') : null;
    const image = card && card.querySelector(`#${card.id}-image`);
    if (!image) return null;
    const emptyZone = !image.querySelector('img') && image.contains(e.target);
    return emptyZone ? null : image;  // an empty slot's own upload area takes its drops
  };
  const mark = (image, on) => image.classList.toggle('sigma-drop-here', on);
  document.addEventListener('dragover', (e) => {
    const image = carriesFiles(e) && slotOf(e);
    if (!image) return;
    e.preventDefault();
    e.stopPropagation();
    e.dataTransfer.dropEffect = 'copy';
    mark(image, true);
  }, true);
  document.addEventListener('dragleave', (e) => {
    const image = carriesFiles(e) && slotOf(e);
    if (image && !image.closest('.sigma-card').contains(e.relatedTarget)) mark(image, false);
  }, true);
  document.addEventListener('drop', (e) => {
    const image = carriesFiles(e) && slotOf(e);
    if (!image) return;
    e.preventDefault();
    e.stopPropagation();
    mark(image, false);
    const input = image.querySelector('input[type=file]');
    if (!input || !e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  }, true);
  for (const type of ['dragover', 'drop']) {
    window.addEventListener(type, (e) => {  // reached only where no upload area took it
      if (!carriesFiles(e)) return;
      e.preventDefault();
      if (type === 'dragover') e.dataTransfer.dropEffect = 'none';
    });
  }
}

() => {
  /* Files arriving at the page (run on load), dropped or pasted. A file dropped anywhere on a
     slot's card goes where the slot's file picker sends it: gradio's own drop handler on a
     slot that shows an image empties it first, then drops a file of the wrong type without a
     word (the image was lost), and the rest of the card took no drop at all. Through the
     picker a wrong type gets gradio's notice and the image stays; a file our reader refuses
     leaves it as it was too. A file dropped outside every card and upload area is refused,
     where the browser would otherwise leave the studio to open it. Drags of text (the strip's
     reorder) pass. An image pasted (Ctrl+V) outside a text field goes to the slot whose card
     has the focus, else to the first slot with no image. */
  const carriesFiles = (e) => !!e.dataTransfer && [...e.dataTransfer.types].includes('Files');
  const imageOf = (card) => (card ? card.querySelector(`#${card.id}-image`) : null);
  const shows = (image) => !!image && !!image.querySelector('img[src]');
  const cardOf = (node) => (node instanceof Element ? node.closest('.sigma-card[id^="slot-"]') : null);
  const slotOf = (e) => {
    const image = imageOf(cardOf(e.target));
    if (!image) return null;
    const emptyZone = !shows(image) && image.contains(e.target);
    return emptyZone ? null : image;  // an empty slot's own upload area takes its drops
  };
  const send = (image, files) => {  // the slot's file picker's way, gradio's checks included
    const input = image.querySelector('input[type=file]');
    if (!input || !files.length) return;
    input.files = files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
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
    if (image && !cardOf(image).contains(e.relatedTarget)) mark(image, false);
  }, true);
  document.addEventListener('drop', (e) => {
    const image = carriesFiles(e) && slotOf(e);
    if (!image) return;
    e.preventDefault();
    e.stopPropagation();
    mark(image, false);
    send(image, e.dataTransfer.files);
  }, true);
  for (const type of ['dragover', 'drop']) {
    window.addEventListener(type, (e) => {  // reached only where no upload area took it
      if (!carriesFiles(e)) return;
      e.preventDefault();
      if (type === 'dragover') e.dataTransfer.dropEffect = 'none';
    });
  }
  document.addEventListener('paste', (e) => {
    const files = e.clipboardData ? e.clipboardData.files : null;
    const typing = e.target instanceof Element && e.target.closest('input, textarea, [contenteditable]');
    if (!files || !files.length || typing) return;
    const cards = [...document.querySelectorAll('.sigma-card[id^="slot-"]')]
      .filter((card) => card.offsetParent !== null);
    const focused = cardOf(document.activeElement);
    const card = focused || cards.find((c) => imageOf(c) && !shows(imageOf(c)));
    if (!card) return;
    e.preventDefault();
    send(imageOf(card), files);
  });
}

() => {
  /* Files arriving at the page (run on load), dropped or pasted, each sent through a file
     input as if picked there, so gradio's type check and our reader still answer:
     - one file on a slot's card: that slot's input. gradio's own drop handler on a slot that
       shows an image empties it first, then drops a wrong type without a word, and the rest
       of the card took no drop; through the input a refused file leaves the image as it was.
     - several files on the slots, or one on the slots' area outside the cards (the order
       strip, the add buttons): "+ Add images", each image to a slot of its own (a slot's own
       upload area keeps only the first of several).
     - a preset JSON anywhere, or any file on the toolbar (a result PNG): the toolbar's opener.
     - anywhere else: refused, where the browser would leave the studio to open the file.
     Drags of text (the strip's reorder) pass. An image pasted (Ctrl+V) outside a text field
     goes to the slot whose card has the focus, else to the first slot with no image, else to
     a new slot; several go to "+ Add images". */
  const carriesFiles = (e) => !!e.dataTransfer && [...e.dataTransfer.types].includes('Files');
  const imageOf = (card) => (card ? card.querySelector(`#${card.id}-image`) : null);
  const shows = (image) => !!image && !!image.querySelector('img[src]');
  const cardOf = (node) => (node instanceof Element ? node.closest('.sigma-card[id^="slot-"]') : null);
  const inputOf = (image) => image.querySelector('input[type=file]');
  const within = (e, selector) => e.target instanceof Element && !!e.target.closest(selector);
  const adder = () => document.querySelector('#slot-adders input[type=file][multiple]');
  const slotsArea = () => document.getElementById('slots-block');
  const opener = () => document.querySelector('#toolbar input[type=file]');
  const presetsOnly = (items) => items.length > 0
    && [...items].every((item) => item.kind === 'file' && item.type === 'application/json');
  const targetOf = (e) => {  // [the file input a drag goes to, the element to highlight]
    if (!carriesFiles(e)) return null;
    if (within(e, '#toolbar') || presetsOnly(e.dataTransfer.items)) {
      return [opener(), document.getElementById('toolbar')];
    }
    const card = cardOf(e.target);
    const toAdder = e.dataTransfer.items.length > 1 || !card;
    if (within(e, '#slots-block') && toAdder) return [adder(), slotsArea()];
    const image = imageOf(card);
    if (!image || (!shows(image) && image.contains(e.target))) return null;  // its own area
    return [inputOf(image), image];
  };
  const send = (input, files) => {  // the file picker's way, gradio's checks included
    if (!input || !files.length) return;
    input.files = files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  };
  const mark = (element, on) => element && element.classList.toggle('sigma-drop-here', on);
  document.addEventListener('dragover', (e) => {
    const target = targetOf(e);
    if (!target) return;
    e.preventDefault();
    e.stopPropagation();
    e.dataTransfer.dropEffect = 'copy';
    mark(target[1], true);
  }, true);
  document.addEventListener('dragleave', (e) => {
    const target = targetOf(e);
    if (target && !target[1].contains(e.relatedTarget)) mark(target[1], false);
  }, true);
  document.addEventListener('drop', (e) => {
    const target = targetOf(e);
    if (!target) return;
    e.preventDefault();
    e.stopPropagation();
    mark(target[1], false);
    send(target[0], e.dataTransfer.files);
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
    if (!files || !files.length || within(e, 'input, textarea, [contenteditable]')) return;
    const cards = [...document.querySelectorAll('.sigma-card[id^="slot-"]')]
      .filter((card) => card.offsetParent !== null);
    const focused = cardOf(document.activeElement);
    const card = focused || cards.find((c) => imageOf(c) && !shows(imageOf(c)));
    e.preventDefault();
    const one = files.length === 1 && card;
    send(one ? inputOf(imageOf(card)) : adder(), files);
  });
}

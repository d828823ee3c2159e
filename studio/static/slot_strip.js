/* The slot strip's `js_on_load` (gradio gives it `element` and `trigger`): dropping one
   thumbnail on another sends the new order of the slots as an "input" event ("change" also
   fires on server updates, so it could not tell a drop from a refresh). */
let dragged = null;
element.addEventListener('dragstart', (e) => {
  const item = e.target.closest('[data-slot]');
  if (!item) return;
  dragged = Number(item.dataset.slot);
  e.dataTransfer.effectAllowed = 'move';
  e.dataTransfer.setData('text/plain', String(dragged));
});
element.addEventListener('dragover', (e) => { if (dragged !== null) e.preventDefault(); });
element.addEventListener('drop', (e) => {
  e.preventDefault();
  const target = e.target.closest('[data-slot]');
  const from = dragged;
  dragged = null;
  if (!target || from === null || Number(target.dataset.slot) === from) return;
  const order = [...element.querySelectorAll('[data-slot]')].map((x) => Number(x.dataset.slot));
  order.splice(order.indexOf(from), 1);
  const to = Number(target.dataset.slot);
  order.splice(order.indexOf(to) + (from < to ? 1 : 0), 0, from);  // after it going down
  trigger('input', {order});
});
element.addEventListener('dragend', () => { dragged = null; });

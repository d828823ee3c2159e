/* A slot's cropper (gr.HTML `js_on_load`: gradio gives it `element` and `trigger`). Dragging on
   the picture draws the crop box; on release the box, in the pixels of the upright image
   (data-width x data-height, however small the picture is shown), goes to the server as an
   "input" event. A click without a drag changes nothing. */
let start = null;
const frame = () => element.querySelector('.sigma-crop-frame');
const at = (e) => {
  const r = frame().getBoundingClientRect();
  const x = Math.min(Math.max(e.clientX - r.left, 0), r.width);
  const y = Math.min(Math.max(e.clientY - r.top, 0), r.height);
  return [x / r.width, y / r.height];
};
const draw = (a, b) => {
  const box = frame().querySelector('.sigma-crop-box');
  const [l, t] = [Math.min(a[0], b[0]), Math.min(a[1], b[1])];
  const [w, h] = [Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
  box.style.cssText = `display:block;left:${l * 100}%;top:${t * 100}%;` +
    `width:${w * 100}%;height:${h * 100}%`;
  return [l, t, l + w, t + h];
};
element.addEventListener('pointerdown', (e) => {
  if (!frame() || !frame().contains(e.target)) return;
  e.preventDefault();
  start = at(e);
  element.setPointerCapture(e.pointerId);
});
element.addEventListener('pointermove', (e) => { if (start) draw(start, at(e)); });
element.addEventListener('pointerup', (e) => {
  if (!start) return;
  const [l, t, r, b] = draw(start, at(e));
  start = null;
  const f = frame();
  const [w, h] = [Number(f.dataset.width), Number(f.dataset.height)];
  const box = [Math.round(l * w), Math.round(t * h), Math.round(r * w), Math.round(b * h)];
  if (box[2] - box[0] < 2 || box[3] - box[1] < 2) return;  // a click, not a drag
  trigger('input', {box});
});

// Drawing shared by the page (app.js) and its learn mode (learn.js).

// Draws grey values (0-255, row-major, `size` x `size`) onto `canvas`, which takes that
// size; returns the canvas's 2-D context for what is drawn over them.
export function drawGrey(canvas, pixels, size) {
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    const p = pixels[i];
    img.data[4 * i] = p; img.data[4 * i + 1] = p; img.data[4 * i + 2] = p; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return ctx;
}

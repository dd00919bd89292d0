// Mask painting for the Retouch playground: brush and eraser on a canvas over the picture.
// The canvas has the picture's own pixel size, so the exported mask matches it exactly (the server
// requires the same size); CSS only scales it for display.
"use strict";

const RetouchMask = (() => {
  const byId = (id) => document.getElementById(id);
  const paint = { tool: "brush", active: false, last: null, painted: false };

  const maskCanvas = byId("mask-canvas");
  const maskContext = maskCanvas.getContext("2d");

  function loadMaskEditor(first) {
    byId("mask-editor").hidden = !first;
    if (!first) return;
    const img = byId("base-image");
    if (img.dataset.src === first.url) return;
    img.onload = () => {
      maskCanvas.width = img.naturalWidth;
      maskCanvas.height = img.naturalHeight;
      clearMask();
    };
    img.dataset.src = first.url;
    img.src = first.url;
  }

  function clearMask() {
    maskContext.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    paint.painted = false;
    updateMaskState();
  }

  function updateMaskState() {
    byId("mask-state").textContent = paint.painted
      ? "mask painted: only the painted area changes"
      : "no mask: the whole picture may change";
  }

  function canvasPoint(event) {
    const rect = maskCanvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * maskCanvas.width) / rect.width,
      y: ((event.clientY - rect.top) * maskCanvas.height) / rect.height,
    };
  }

  function brushRadius() {
    // The size slider is in screen pixels; convert to picture pixels.
    const rect = maskCanvas.getBoundingClientRect();
    return (Number(byId("brush-size").value) / 2) * (maskCanvas.width / Math.max(rect.width, 1));
  }

  function paintTo(point) {
    maskContext.globalCompositeOperation = paint.tool === "eraser" ? "destination-out" : "source-over";
    maskContext.strokeStyle = maskContext.fillStyle = "rgb(255, 40, 90)";
    maskContext.lineWidth = brushRadius() * 2;
    maskContext.lineCap = maskContext.lineJoin = "round";
    if (paint.last) {
      maskContext.beginPath();
      maskContext.moveTo(paint.last.x, paint.last.y);
      maskContext.lineTo(point.x, point.y);
      maskContext.stroke();
    }
    maskContext.beginPath();
    maskContext.arc(point.x, point.y, brushRadius(), 0, Math.PI * 2);
    maskContext.fill();
    paint.last = point;
  }

  maskCanvas.addEventListener("pointerdown", (event) => {
    paint.active = true;
    paint.last = null;
    maskCanvas.setPointerCapture(event.pointerId);
    paintTo(canvasPoint(event));
  });
  maskCanvas.addEventListener("pointermove", (event) => {
    if (paint.active) paintTo(canvasPoint(event));
  });
  for (const type of ["pointerup", "pointercancel"]) {
    maskCanvas.addEventListener(type, () => {
      if (!paint.active) return;
      paint.active = false;
      paint.last = null;
      paint.painted = maskHasPaint();
      updateMaskState();
    });
  }

  function maskHasPaint() {
    const { data } = maskContext.getImageData(0, 0, maskCanvas.width, maskCanvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    return false;
  }

  function selectTool(tool) {
    paint.tool = tool;
    for (const [id, name] of [["tool-brush", "brush"], ["tool-eraser", "eraser"]]) {
      byId(id).classList.toggle("active", tool === name);
      byId(id).setAttribute("aria-pressed", String(tool === name));
    }
  }
  byId("tool-brush").addEventListener("click", () => selectTool("brush"));
  byId("tool-eraser").addEventListener("click", () => selectTool("eraser"));
  byId("mask-clear").addEventListener("click", clearMask);

  // White where painted (edit), black elsewhere (keep): the mask convention of the engine.
  function exportMask() {
    const out = document.createElement("canvas");
    out.width = maskCanvas.width;
    out.height = maskCanvas.height;
    const context = out.getContext("2d");
    const painted = maskContext.getImageData(0, 0, maskCanvas.width, maskCanvas.height);
    const mask = context.createImageData(out.width, out.height);
    for (let i = 0; i < painted.data.length; i += 4) {
      const value = painted.data[i + 3] >= 128 ? 255 : 0;
      mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = value;
      mask.data[i + 3] = 255;
    }
    context.putImageData(mask, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  return {
    load: loadMaskEditor,
    painted: () => paint.painted,
    exportPng: exportMask,
  };
})();

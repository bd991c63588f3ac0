// <cxr-msn-demo> for other pages: the cxr-msn page in an iframe, sized to its content
// (the page posts its height to its parent as it changes; only the height).
//
//   <script src="https://YOUR-HOST/cxr-msn/embed.js"></script>
//   <cxr-msn-demo sample="rg1-adult-pa.dcm" hide-notice></cxr-msn-demo>
//
// Attributes: src (the page's folder; default: where embed.js came from), model (a model
// file URL), sample (a bundled sample's file name), hide-notice, backend (auto|webgpu|cpu),
// mode ("learn": the "Learn how it works" tab alone), warmup ("0": no warm-up after the
// model loads), height (a fixed CSS height instead of the content's; before the page has
// said its height, 1100px).
(() => {
  const here = document.currentScript ? new URL(".", document.currentScript.src).href : "./";
  class CxrMsnDemo extends HTMLElement {
    connectedCallback() {
      const src = new URL(this.getAttribute("src") || here, location.href);
      const page = new URL("index.html", src.href.endsWith("/") ? src.href : src.href + "/");
      for (const [attr, param] of [["model", "model"], ["sample", "sample"], ["backend", "backend"], ["mode", "mode"], ["warmup", "warmup"]]) {
        if (this.hasAttribute(attr)) page.searchParams.set(param, this.getAttribute(attr));
      }
      if (this.hasAttribute("hide-notice")) page.searchParams.set("notice", "0");
      const frame = document.createElement("iframe");
      frame.src = page.href;
      frame.title = this.getAttribute("title") || "cxr-msn chest X-ray demo";
      const fixed = this.getAttribute("height");
      frame.style.cssText = `width:100%;border:0;height:${fixed || "1100px"}`;
      frame.allow = "webgpu";
      this.replaceChildren(frame);
      window.removeEventListener("message", this.onHeight || (() => {}));
      this.onHeight = (e) => {
        const height = e.data && e.data.type === "cxr-msn-height" && Number(e.data.height);
        if (e.source !== frame.contentWindow || !(height > 0)) return;
        frame.style.height = `${Math.min(Math.max(height, 200), 100000)}px`;
      };
      if (!fixed) window.addEventListener("message", this.onHeight);
    }

    disconnectedCallback() {
      if (this.onHeight) window.removeEventListener("message", this.onHeight);
    }
  }
  if (!customElements.get("cxr-msn-demo")) customElements.define("cxr-msn-demo", CxrMsnDemo);
})();

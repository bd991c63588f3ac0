import { launchChromium, serve } from "./serve.mjs";
const dists = { old: "/tmp/ci-clone/dist", new: "/work/main/dist" };
const out = { old: [], new: [] };
for (let r = 0; r < 4; r++) for (const k of ["old", "new"]) {
  process.env.DIST = dists[k];
  const { origin, close } = await serve();
  const browser = await launchChromium();
  const page = await browser.newPage();
  const t0 = Date.now();
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&sample=NORMAL2-IM-1438-0001.jpeg`);
  await page.waitForSelector("#results .card:not(.error)", { timeout: 300000 });
  out[k].push(Date.now() - t0);
  await browser.close(); await close();
}
console.log(JSON.stringify(out));

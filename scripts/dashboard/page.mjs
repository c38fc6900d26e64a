// Drives Courier's dashboard page in headless Chromium with playwright-core.
//
//   node scripts/dashboard/page.mjs URL SCREENSHOT [WORKERS]
//
// Protocol on stdin/stdout, so the caller runs the cluster's work at the right moment:
//   1. opens URL, waits until the page is live and shows WORKERS workers, prints "READY";
//   2. waits for a line "CHECK" on stdin (the caller ran its graph), then waits until every
//      task group shows 100 % done and the task stream has drawn bars, saves a screenshot to
//      SCREENSHOT, prints "OK {json of what it saw}";
//   3. "HOLD" instead keeps the page open (live) until stdin closes (for the benchmark).
// Any failure prints "FAIL reason" and exits 1.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, screenshot, workersArg] = process.argv.slice(2);
const workers = Number(workersArg || 2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeout = 120_000;

function fail(why) {
  console.log("FAIL " + why);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
}).catch(e => fail("cannot start chromium: " + e.message));
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const errors = [];
page.on("pageerror", e => errors.push(e.message));
page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
const external = [];
page.on("request", r => { if (!r.url().startsWith(new URL(url).origin)) external.push(r.url()); });

try {
  await page.goto(url, { timeout });
  await page.waitForFunction(n => document.getElementById("status").textContent === "live"
      && document.querySelectorAll("#workers tbody tr").length === n, workers, { timeout });
} catch (e) {
  fail("the page did not go live with " + workers + " workers: " + e.message + " " + errors.join("; "));
}
console.log("READY");

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() === "HOLD") continue;
  if (line.trim() !== "CHECK") continue;
  try {
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll("#progress tbody tr")];
      const bars = Number(document.getElementById("stream").dataset.bars || 0);
      return rows.length > 0 && rows.every(r => r.children[1].dataset.percent === "100") && bars > 0;
    }, null, { timeout });
  } catch (e) {
    fail("progress did not reach 100 % with task-stream bars: " + e.message);
  }
  const seen = await page.evaluate(() => ({
    workers: [...document.querySelectorAll("#workers tbody tr")].map(r => r.dataset.worker),
    groups: [...document.querySelectorAll("#progress tbody tr")].map(r => [r.dataset.function, r.children[1].dataset.percent, Number(r.children[2].textContent)]),
    bars: Number(document.getElementById("stream").dataset.bars),
    finished: Number(document.getElementById("finished").textContent),
  }));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) fail("errors in the page: " + errors.join("; "));
  if (external.length) fail("the page fetched from elsewhere: " + external.join(", "));
  console.log("OK " + JSON.stringify(seen));
  break;
}
await browser.close();
process.exit(0);

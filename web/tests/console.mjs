// The browser console end to end in a real headless Chromium (Debian's, driven by
// playwright-core). Run by crates/cloudterm-server/tests/it/console.rs against a real server:
//   CLOUDTERM_URL=http://127.0.0.1:PORT CLOUDTERM_TOKEN=JWT node web/tests/console.mjs
// Exits 0 when every step passed; otherwise prints the failed step, the page's text and its
// console log, and exits 1. CHROMIUM overrides the browser's path (default /usr/bin/chromium).
import { chromium } from "playwright-core";

const url = process.env.CLOUDTERM_URL;
const goodToken = process.env.CLOUDTERM_TOKEN;
if (!url || !goodToken) {
  console.error("set CLOUDTERM_URL and CLOUDTERM_TOKEN");
  process.exit(2);
}
const WAIT = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
const page = await context.newPage();
const log = [];
page.on("console", (message) => log.push(`${message.type()}: ${message.text()}`));
page.on("pageerror", (error) => log.push(`pageerror: ${error.message}`));

let step = "start";
function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** The terminal's visible text, as the DOM renderer shows it. */
const screen = () => page.locator("#terminal .xterm-rows").innerText();

async function waitForScreen(text) {
  await page.waitForFunction(
    (needle) => (document.querySelector("#terminal .xterm-rows")?.innerText ?? "").includes(needle),
    text,
    { timeout: WAIT },
  );
}

async function waitConnected() {
  await page.waitForSelector('#status[data-state="connected"]', { timeout: WAIT });
}

/** Types a command line into the terminal, as a person would. */
async function typeLine(text) {
  await page.locator("#terminal .xterm-helper-textarea").focus();
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

/** `stty size` inside the shell equals the size the page shows in cells. */
async function sizeReachesTheShell(tag) {
  await page.waitForFunction(() => {
    const el = document.getElementById("terminal");
    return el.dataset.cols && el.dataset.rows;
  });
  const { cols, rows } = await page.locator("#terminal").evaluate((el) => el.dataset);
  await typeLine(`echo ${tag}-$(stty size | tr ' ' x)`);
  await waitForScreen(`${tag}-${rows}x${cols}`);
  return `${rows}x${cols}`;
}

try {
  step = "the page loads and asks for a token";
  await page.goto(url);
  await page.waitForSelector("#signin-view:not([hidden])", { timeout: WAIT });

  step = "a bad token is refused with the server's reason";
  await page.fill("#token-input", "not-a-jwt");
  await page.click("#sign-in");
  await page.waitForFunction(() => document.getElementById("signin-error").textContent.includes("invalid token"), null, { timeout: WAIT });
  check(await page.locator("#sandboxes-view").isHidden(), "a bad token opened the sandboxes view");

  step = "the dev button mints a token for the principal typed";
  await page.waitForSelector("#dev-form:not([hidden])", { timeout: WAIT });
  await page.fill("#dev-principal", "console-dev");
  await page.click("#mint");
  await page.waitForSelector("#sandboxes-view:not([hidden])", { timeout: WAIT });
  check((await page.textContent("#principal")) === "console-dev", "the minted token names another principal");
  await page.click("#sign-out");
  await page.waitForSelector("#signin-view:not([hidden])", { timeout: WAIT });

  step = "a pasted token signs in";
  await page.fill("#token-input", goodToken);
  await page.click("#sign-in");
  await page.waitForSelector("#sandboxes-view:not([hidden])", { timeout: WAIT });

  step = "a sandbox is created and listed";
  await page.click("#create");
  const row = page.locator('#sandboxes tbody tr[data-state="running"]');
  await row.first().waitFor({ timeout: WAIT });

  step = "a terminal opens and runs a command";
  await row.first().locator("button.open-terminal").click();
  await waitConnected();
  const address = page.url();
  check(/#\/sandboxes\/sbx_[^/]+\/terminal\/web-[0-9a-f]+$/.test(address), `the address names no session: ${address}`);
  await typeLine("echo hello-$((6*7)); MARK=kept-$((2+3))");
  await waitForScreen("hello-42");

  step = "the shell sees the page's size, and a new one when the window changes";
  const before = await sizeReachesTheShell("size1");
  await page.setViewportSize({ width: 700, height: 450 });
  await page.waitForFunction((old) => {
    const el = document.getElementById("terminal");
    return `${el.dataset.rows}x${el.dataset.cols}` !== old;
  }, before, { timeout: WAIT });
  const after = await sizeReachesTheShell("size2");
  check(before !== after, `the size did not change: ${before}`);

  step = "a reload re-attaches to the same session and shows its screen";
  // From here on the terminal's WebSockets pass through Playwright, which can cut them the way
  // a network drop does: the page only sees its connection close.
  const sockets = [];
  await page.routeWebSocket(/\/terminal\?/, (socket) => {
    sockets.push({ socket, server: socket.connectToServer() });
  });
  await page.reload();
  await waitConnected();
  check(page.url() === address, `the reload opened another terminal: ${page.url()}`);
  await waitForScreen("hello-42");
  await typeLine("echo mark-$MARK");
  await waitForScreen("mark-kept-5");

  step = "after a network drop it reconnects by itself to the same session";
  check(sockets.length === 1, `expected one routed connection, saw ${sockets.length}`);
  sockets[0].server.close();
  await sockets[0].socket.close({ code: 4000, reason: "network drop" });
  await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: WAIT });
  await waitConnected();
  check(sockets.length === 2, `expected one reconnection, saw ${sockets.length - 1}`);
  await typeLine("echo again-$MARK");
  await waitForScreen("again-kept-5");

  step = "exit ends the session and the page says so";
  await typeLine("exit 7");
  await page.waitForSelector('#status[data-state="exited"]', { timeout: WAIT });
  check((await page.textContent("#status")).includes("code 7"), "the exit code is not shown");

  console.log("console test passed");
  await browser.close();
} catch (error) {
  console.error(`FAILED at step: ${step}\n${error.stack || error}`);
  try {
    console.error("--- status:", await page.textContent("#status"));
    console.error("--- terminal:\n" + (await screen().catch(() => "(none)")));
    console.error("--- page text:\n" + (await page.locator("body").innerText()));
  } catch {
    // The page itself is gone; the log below is all there is.
  }
  console.error("--- browser console:\n" + log.join("\n"));
  await browser.close();
  process.exit(1);
}

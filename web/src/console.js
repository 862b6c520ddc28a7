// The cloudterm browser console: sign in with a token, list and create sandboxes, and open a
// terminal on one. It is an ordinary API client (docs/api-design.md, docs/terminal.md): bearer
// tokens for HTTP, `?token=` on the terminal's WebSocket (browsers cannot set its headers).
//
// The page's address names the terminal (`#/sandboxes/ID/terminal/SESSION`), so a reload
// re-attaches to the same session, and the server repaints its current screen.
import { Terminal } from "./xterm.mjs";
import { FitAddon } from "./addon-fit.mjs";

const TOKEN_KEY = "cloudterm.token";
/** Reconnect delays after a drop: doubling from the first, capped at the last, with jitter. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;

const $ = (id) => document.getElementById(id);

// ---- the token and the API -------------------------------------------------------------

/** The token this tab signed in with. localStorage: it outlives a reload and is shared by tabs. */
const token = {
  get: () => localStorage.getItem(TOKEN_KEY),
  set: (value) => localStorage.setItem(TOKEN_KEY, value),
  clear: () => localStorage.removeItem(TOKEN_KEY),
};

/** An API failure, with the envelope's code and message (`{"error": {code, message}}`). */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API; answers the JSON body, or throws an ApiError. */
async function api(method, path, body, bearer = token.get()) {
  const headers = {};
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: reported below with the status.
  }
  if (!response.ok) {
    const error = json && json.error ? json.error : { code: "http_" + response.status, message: text || response.statusText };
    throw new ApiError(response.status, error.code, error.message);
  }
  return json;
}

// ---- views -----------------------------------------------------------------------------

function show(view) {
  for (const id of ["signin-view", "sandboxes-view", "terminal-view"]) $(id).hidden = id !== view;
}

let current = null; // the open terminal, if any

/** Shows what the address names; the single entry point after every change of address. */
async function route() {
  if (current) {
    current.dispose();
    current = null;
  }
  if (!token.get()) return showSignIn();
  let me;
  try {
    me = await api("GET", "/me");
  } catch (error) {
    if (error.status === 401) return signOut(`Your token was refused: ${error.message}`);
    $("principal").textContent = "?";
    me = null;
  }
  if (me) $("principal").textContent = me.principal;
  $("who").hidden = false;
  const match = location.hash.match(/^#\/sandboxes\/([^/]+)\/terminal\/([A-Za-z0-9_-]{1,64})$/);
  if (match) return openTerminal(decodeURIComponent(match[1]), match[2]);
  return showSandboxes();
}

async function showSignIn(message = "") {
  show("signin-view");
  $("who").hidden = true;
  $("signin-error").textContent = message;
  // The dev issuer publishes its keys; with a real IdP that route answers 404.
  try {
    const response = await fetch("/.well-known/jwks.json");
    $("dev-form").hidden = !response.ok;
  } catch {
    $("dev-form").hidden = true;
  }
}

function signOut(message = "") {
  token.clear();
  if (location.hash && location.hash !== "#/") {
    history.replaceState(null, "", "#/");
  }
  route().then(() => {
    if (message) $("signin-error").textContent = message;
  });
}

/** Checks a token with `GET /me` before keeping it. */
async function signIn(candidate) {
  $("signin-error").textContent = "";
  candidate = candidate.trim();
  if (!candidate) {
    $("signin-error").textContent = "Paste a token first.";
    return;
  }
  try {
    await api("GET", "/me", undefined, candidate);
  } catch (error) {
    $("signin-error").textContent = `Sign-in failed: ${error.message}`;
    return;
  }
  token.set(candidate);
  $("token-input").value = "";
  route();
}

async function mintDevToken() {
  $("signin-error").textContent = "";
  try {
    const minted = await api("POST", "/dev/token", { principal: $("dev-principal").value }, null);
    await signIn(minted.token);
  } catch (error) {
    $("signin-error").textContent = `Could not mint a dev token: ${error.message}`;
  }
}

async function showSandboxes() {
  show("sandboxes-view");
  $("sandboxes-error").textContent = "";
  let list;
  try {
    list = (await api("GET", "/sandboxes")).sandboxes;
  } catch (error) {
    if (error.status === 401) return signOut(`Your token was refused: ${error.message}`);
    $("sandboxes-error").textContent = `Listing sandboxes failed: ${error.message}`;
    return;
  }
  const body = $("sandboxes").tBodies[0];
  body.replaceChildren();
  $("no-sandboxes").hidden = list.length > 0;
  for (const sandbox of list) {
    const row = body.insertRow();
    row.dataset.id = sandbox.id;
    row.dataset.state = sandbox.state;
    const cell = (text) => {
      const td = row.insertCell();
      td.textContent = text;
      return td;
    };
    const id = row.insertCell().appendChild(document.createElement("code"));
    id.textContent = sandbox.id;
    cell(sandbox.state);
    cell(sandbox.runtime);
    cell(new Date(sandbox.created_at).toLocaleString());
    cell(new Date(sandbox.expires_at).toLocaleString());
    const actions = row.insertCell();
    if (sandbox.state === "running") {
      const open = actions.appendChild(document.createElement("button"));
      open.textContent = "Open terminal";
      open.className = "open-terminal";
      open.onclick = () => {
        location.hash = `#/sandboxes/${encodeURIComponent(sandbox.id)}/terminal/${newSessionName()}`;
      };
    }
    const remove = actions.appendChild(document.createElement("button"));
    remove.textContent = "Delete";
    remove.onclick = async () => {
      try {
        await api("DELETE", `/sandboxes/${encodeURIComponent(sandbox.id)}`);
      } catch (error) {
        $("sandboxes-error").textContent = `Deleting ${sandbox.id} failed: ${error.message}`;
      }
      showSandboxes();
    };
  }
}

async function createSandbox() {
  $("create").disabled = true;
  $("sandboxes-error").textContent = "";
  try {
    await api("POST", "/sandboxes", {});
  } catch (error) {
    $("sandboxes-error").textContent = `Creating a sandbox failed: ${error.message}`;
  } finally {
    $("create").disabled = false;
  }
  showSandboxes();
}

/** A session name the server accepts (1 to 64 of `A-Z a-z 0-9 _ -`), unique enough per tab. */
function newSessionName() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- the terminal ----------------------------------------------------------------------

function openTerminal(sandboxId, session) {
  show("terminal-view");
  $("terminal-title").textContent = `${sandboxId} · session ${session}`;
  $("new-session").hidden = true;
  current = new TerminalConnection($("terminal"), sandboxId, session);
}

/**
 * One terminal on the page, attached to one named session. It reconnects after a drop with
 * exponential backoff (the session keeps running on the server, which repaints the screen on
 * re-attach), and sends a `resize` control frame whenever the window changes its size in cells.
 */
class TerminalConnection {
  constructor(element, sandboxId, session) {
    this.sandboxId = sandboxId;
    this.session = session;
    this.attempt = 0;
    this.finished = false;
    this.socket = null;
    this.timer = null;
    this.element = element;
    this.term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    element.replaceChildren();
    this.term.open(element);
    this.fitNow();
    this.encoder = new TextEncoder();
    this.term.onData((data) => this.sendBytes(this.encoder.encode(data)));
    this.term.onBinary((data) => this.sendBytes(Uint8Array.from(data, (c) => c.charCodeAt(0))));
    this.term.onResize(({ cols, rows }) => {
      this.showSize();
      this.sendControl({ type: "resize", cols, rows });
    });
    this.resizeObserver = new ResizeObserver(() => this.fitNow());
    this.resizeObserver.observe(element);
    this.onOnline = () => this.reconnectNow();
    window.addEventListener("online", this.onOnline);
    this.term.focus();
    this.connect();
  }

  fitNow() {
    try {
      this.fit.fit();
    } catch {
      // Not laid out yet (hidden): the next resize fits it.
    }
    this.showSize();
  }

  /** The size in cells, on the element, for people and tests to read. */
  showSize() {
    this.element.dataset.cols = this.term.cols;
    this.element.dataset.rows = this.term.rows;
  }

  status(state, text) {
    $("status").dataset.state = state;
    $("status").textContent = text;
  }

  url() {
    const url = new URL(`/sandboxes/${encodeURIComponent(this.sandboxId)}/terminal`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("cols", this.term.cols);
    url.searchParams.set("rows", this.term.rows);
    url.searchParams.set("session", this.session);
    url.searchParams.set("token", token.get() || "");
    return url;
  }

  connect() {
    if (this.finished) return;
    this.status(this.attempt === 0 ? "connecting" : "reconnecting", this.attempt === 0 ? "connecting…" : "reconnecting…");
    const socket = new WebSocket(this.url());
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.status("connected", "connected");
      // The window may have changed while the connection was down.
      this.sendControl({ type: "resize", cols: this.term.cols, rows: this.term.rows });
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") this.control(JSON.parse(event.data));
      else this.term.write(new Uint8Array(event.data));
    };
    socket.onclose = () => {
      if (this.socket !== socket || this.finished) return;
      this.socket = null;
      this.retry(opened);
    };
  }

  /** A control message from the server (docs/terminal.md). */
  control(message) {
    if (message.type === "exit") {
      this.finish("exited", `the shell exited with code ${message.code}`);
      $("new-session").hidden = false;
    } else if (message.type === "error" && message.code === "token_expired") {
      this.finish("failed", "the token expired");
      signOut("Your token expired: sign in again (the terminal session keeps running for a while).");
    } else if (message.type === "error") {
      console.warn("terminal:", message.code, message.message);
    }
  }

  /**
   * After a close: a browser hides why an upgrade failed, so ask the API whether the sandbox is
   * still there before trying again, and stop for good when it is not (or the token is bad).
   */
  async retry(wasOpen) {
    if (!wasOpen) {
      try {
        const sandbox = await api("GET", `/sandboxes/${encodeURIComponent(this.sandboxId)}`);
        if (sandbox.state !== "running") return this.finish("failed", `the sandbox is ${sandbox.state}`);
      } catch (error) {
        if (error.status === 401) {
          this.finish("failed", "the token was refused");
          return signOut(`Your token was refused: ${error.message}`);
        }
        if (error.status === 404) return this.finish("failed", "the sandbox no longer exists");
        // Anything else (the network, a restarting server): keep trying.
      }
    }
    if (this.finished) return;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt += 1;
    this.status("reconnecting", `disconnected; reconnecting in ${Math.ceil(delay / 1000)} s…`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** The browser says the network is back: do not wait for the backoff. */
  reconnectNow() {
    if (this.finished || this.socket) return;
    clearTimeout(this.timer);
    this.connect();
  }

  sendBytes(bytes) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(bytes);
  }

  sendControl(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  finish(state, text) {
    this.finished = true;
    clearTimeout(this.timer);
    this.status(state, text);
  }

  dispose() {
    this.finished = true;
    clearTimeout(this.timer);
    window.removeEventListener("online", this.onOnline);
    this.resizeObserver.disconnect();
    if (this.socket) this.socket.close(1000, "closed by the console");
    this.socket = null;
    this.term.dispose();
  }
}

// ---- wiring ----------------------------------------------------------------------------

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token-input").value);
});
$("dev-form").addEventListener("submit", (event) => {
  event.preventDefault();
  mintDevToken();
});
$("sign-out").addEventListener("click", () => signOut());
$("create").addEventListener("click", createSandbox);
$("refresh").addEventListener("click", showSandboxes);
$("new-session").addEventListener("click", () => {
  const match = location.hash.match(/^#\/sandboxes\/([^/]+)\/terminal\//);
  if (match) location.hash = `#/sandboxes/${match[1]}/terminal/${newSessionName()}`;
});
window.addEventListener("hashchange", route);
route();

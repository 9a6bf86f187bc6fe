// The dashboard in a real browser: Debian's chromium, headless, driven by playwright-core,
// against a running `fleet serve` whose inventory is a real cluster (set up by
// tests/e2e/browser.rs, which passes everything in the environment). Logs in, sees the fleet,
// opens a deep link, starts a rollout as an operator and watches every node's progress change
// on the page without reloading it, checks that a viewer has no buttons and that the API
// refuses them, opens an admin's users page, runs axe-core on every page (no serious or
// critical violation), and keeps a screenshot of each page. Prints one JSON line of what it saw; exits 1 naming the first
// check that failed.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const env = (name) => {
  const v = process.env[name];
  if (!v) { throw new Error(`${name} is not set`); }
  return v;
};
const base = env("FLEET_URL");
const shots = env("SHOTS_DIR");
const version = env("ROLLOUT_VERSION");
const nodes = env("NODES").split(",");
mkdirSync(shots, { recursive: true });

const seen = { pages: [], axe: {}, steps: {}, latency_ms: {}, navigations_during_rollout: null };

function check(ok, what) {
  if (!ok) { throw new Error(what); }
}

async function axe(page, name) {
  await page.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  seen.axe[name] = result.violations.map((v) => `${v.id} (${v.impact})`);
  check(bad.length === 0, `axe on ${name}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.help}`).join("; ")}`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  seen.pages.push(name);
}

async function login(browser, user, password) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/`);
  check(page.url().startsWith(`${base}/login?next=`), `an anonymous visit goes to the login page, not ${page.url()}`);
  await axe(page, "login");
  await page.fill("#user", user);
  await page.fill("#password", password);
  await Promise.all([page.waitForNavigation(), page.click("button:has-text('Log in')")]);
  check(page.url() === `${base}/`, `after the login: ${page.url()}`);
  return page;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let exit = 0;
try {
  // The operator sees the fleet: every node, each with a state the collector heard.
  const op = await login(browser, env("OPERATOR_USER"), env("OPERATOR_PASSWORD"));
  for (const n of nodes) {
    await op.waitForSelector(`tr[data-node="${n}"][data-state="healthy"]`, { timeout: 30000 });
  }
  await axe(op, "overview");
  await shot(op, "overview");
  // A cluster's and a node's page, from the overview's links.
  await Promise.all([op.waitForNavigation(), op.click(`tr[data-node="${nodes[0]}"] td:nth-child(2) a`)]);
  check(/\/clusters\/[^/]+\/[^/]+$/.test(op.url()), `the cluster link goes to ${op.url()}`);
  await op.waitForSelector(`tr[data-node="${nodes[2]}"]`);
  await axe(op, "cluster");
  await shot(op, "cluster");
  await Promise.all([op.waitForNavigation(), op.click(`tr[data-node="${nodes[0]}"] a`)]);
  check(op.url().endsWith(`/nodes/${nodes[0]}`), `the node link goes to ${op.url()}`);
  await axe(op, "node");
  await shot(op, "node");

  // A deep link opens the filtered view.
  await op.goto(`${base}/?q=${encodeURIComponent(nodes[1])}`);
  const shown = await op.$$eval("tr[data-node]", (rows) => rows.map((r) => r.getAttribute("data-node")));
  check(JSON.stringify(shown) === JSON.stringify([nodes[1]]), `the deep link shows ${shown}`);
  check((await op.inputValue("#f-q")) === nodes[1], "the filter's field holds the link's value");
  await shot(op, "deep-link");

  // The operator starts a rollout with the form, then watches it on its page.
  await op.goto(`${base}/rollouts`);
  await axe(op, "rollouts");
  await op.fill("#r-version", version);
  await op.fill("#r-max", "1");
  await op.fill("#r-healthy", "1");
  await Promise.all([op.waitForNavigation({ timeout: 120000 }), op.click("button:has-text('Start rollout')")]);
  check(/\/rollouts\/[^/]+$/.test(op.url()), `the start lands on the rollout's page, not ${op.url()}`);
  const rolloutUrl = op.url();
  let navigations = 0;
  op.on("framenavigated", (f) => { if (f === op.mainFrame()) { navigations += 1; } });
  const started = Date.now();
  for (;;) {
    const rows = await op.$$eval("tr[data-rollout-node]", (rs) => rs.map((r) => [
      r.getAttribute("data-rollout-node"),
      r.querySelector('[data-field="step"]').textContent,
      r.querySelector('[data-field="outcome"]').textContent,
      Number(r.getAttribute("data-ended-ms") || "0"),
      Date.now(),
    ]));
    for (const [node, step, outcome, endedMs, at] of rows) {
      // How long after the node's agent ended its step the page showed it (the browser's
      // clock, sampled every 100 ms; the agent runs on this machine, so one clock).
      if (outcome === "committed" && endedMs > 0 && !(node in seen.latency_ms)) {
        seen.latency_ms[node] = at - endedMs;
      }
      seen.steps[node] = seen.steps[node] || [];
      const last = seen.steps[node][seen.steps[node].length - 1];
      const now = `${step}/${outcome}`;
      if (last !== now) { seen.steps[node].push(now); }
    }
    if (rows.length === nodes.length && rows.every(([, , o]) => o === "committed")) { break; }
    check(Date.now() - started < 180000, `not every node committed on the page: ${JSON.stringify(rows)}`);
    await op.waitForTimeout(100);
  }
  seen.navigations_during_rollout = navigations;
  check(navigations === 0, `the page was reloaded ${navigations} times`);
  for (const n of nodes) {
    // Each node's row changed at least once on its own, from "—" to a step or outcome.
    check(seen.steps[n].length >= 2, `${n}'s row never changed live: ${seen.steps[n]}`);
  }
  await axe(op, "rollout");
  await shot(op, "rollout");

  // A viewer: no start form, no controls, and the API refuses them.
  const viewer = await login(browser, env("VIEWER_USER"), env("VIEWER_PASSWORD"));
  await viewer.goto(`${base}/rollouts`);
  check((await viewer.$("form[aria-label='Start a rollout']")) === null, "a viewer sees the start form");
  await viewer.goto(rolloutUrl);
  check((await viewer.$$("button[data-action]")).length === 0, "a viewer sees control buttons");
  const id = decodeURIComponent(rolloutUrl.split("/").pop());
  const refused = await viewer.evaluate(async (id) => {
    const csrf = document.body.getAttribute("data-csrf");
    const r = await fetch(`/api/rollouts/${encodeURIComponent(id)}/pause`, { method: "POST", headers: { "X-CSRF-Token": csrf } });
    return r.status;
  }, id);
  check(refused === 403, `the API answered a viewer's pause with ${refused}`);
  await shot(viewer, "rollout-as-viewer");
  await viewer.goto(`${base}/releases`);
  check((await viewer.textContent("tbody")).includes(version), `the releases page lists ${version}`);
  await axe(viewer, "releases");
  await shot(viewer, "releases");
  await viewer.goto(`${base}/audit?command=rollout+start`);
  await axe(viewer, "audit");
  check((await viewer.textContent("tbody")).includes("web:"), "the audit page shows the web's rollout start");
  await shot(viewer, "audit");
  // An admin's users page: the form and the list.
  const admin = await login(browser, env("ADMIN_USER"), env("ADMIN_PASSWORD"));
  await admin.goto(`${base}/users`);
  check((await admin.$("form[aria-label='Add a user']")) !== null, "the users page has its form");
  check((await admin.textContent("tbody")).includes(env("VIEWER_USER")), "the users page lists the viewer");
  await axe(admin, "users");
  await shot(admin, "users");
  console.log(JSON.stringify({ ok: true, ...seen }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e), ...seen }));
  exit = 1;
} finally {
  await browser.close();
}
process.exit(exit);

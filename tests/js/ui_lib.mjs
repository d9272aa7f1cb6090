// What the browser tests of the page share (tests/js/ui_check.mjs,
// tests/js/ui_tls_check.mjs): environment variables that must be set, Debian's
// chromium through playwright-core, and steps that report "ok: <step>" or
// "FAIL: <step>: <why>" and carry on. Exits 3 when a tool or a variable is missing.
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error('playwright-core missing: run make deps (' + e.message + ')');
  process.exit(3);
}

export const env = (k) => {
  if (!process.env[k]) {
    console.error(k + ' not set');
    process.exit(3);
  }
  return process.env[k];
};

// Headless chromium at CHROMIUM (default /usr/bin/chromium).
export const launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});

// result.failed: whether a step failed.
export const result = { failed: false };

export async function step(name, fn) {
  try {
    await fn();
    console.log('ok: ' + name);
  } catch (e) {
    result.failed = true;
    console.log('FAIL: ' + name + ': ' + (e.stack || e));
  }
}

export function assert(cond, msg) {
  if (!cond)
    throw new Error(msg);
}

// The page's banner, in Debian's chromium with playwright-core, against a
// server tests/test_e2e_ui.c started in some trouble: the page at URL must
// show a banner that contains EXPECT within 15 s. Environment: URL, EXPECT,
// CHROMIUM (default /usr/bin/chromium). Prints "ok: <step>" and
// "ui-banner: pass"; exits 1 on a failed step, 3 when a tool is missing.
import { assert, env, launch, result, step } from './ui_lib.mjs';

const URL_PAGE = env('URL');
const EXPECT = env('EXPECT');

const browser = await launch();
const page = await browser.newPage();
const errors = [];
page.on('pageerror', (e) => errors.push('page error: ' + e.message));

await step('the banner says ' + JSON.stringify(EXPECT), async () => {
  await page.goto(URL_PAGE + '/#nodes', { waitUntil: 'domcontentloaded' });
  try {
    await page.waitForFunction((want) => {
      const b = document.querySelector('#banner');
      return !b.hidden && b.textContent.includes(want);
    }, EXPECT, { timeout: 15000 });
  } catch (e) {
    throw new Error('banner: ' + JSON.stringify(await page.locator('#banner').textContent()));
  }
});

await step('no page error', async () => assert(errors.length === 0, errors.join('; ')));

await browser.close();
if (result.failed)
  process.exit(1);
console.log('ui-banner: pass');

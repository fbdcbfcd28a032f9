// Drives the fleet console in Debian's headless Chromium through
// playwright-core. browser_test.go starts the fleet and runs this with:
//   FLEET_URL, ADMIN_TOKEN, AGENT_BIN, CLI_BIN, WORK_DIR, SCREENSHOTS,
//   PPROF_FILE (a pprof to ingest with the API token), PPROF_FUNC (its
//   leaf function), WORKLOAD_FUNC (a function of a workload running on
//   this host), PROFILE_WAIT_MS, CHROMIUM (default /usr/bin/chromium).
// It prints one line per step and exits non-zero on the first failure.
import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const env = process.env;
const URL_ = env.FLEET_URL;
const SHOTS = env.SCREENSHOTS;
const WORK = env.WORK_DIR || mkdtempSync(join(tmpdir(), 'fleetprof-browser-'));
const started = Date.now();
const children = [];
let passed = 0;

function log(...a) { console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a); }
function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }

async function step(name, f) {
  const t0 = Date.now();
  try {
    await f();
    passed++;
    log(`ok - ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    log(`FAIL - ${name}: ${e.stack || e}`);
    throw e;
  }
}

function cli(...args) {
  return execFileSync(env.CLI_BIN, [...args, '--server', URL_], { env: { ...env, FLEETPROF_ADMIN_TOKEN: env.ADMIN_TOKEN }, encoding: 'utf8' });
}

async function ingest(tok) {
  const body = readFileSync(env.PPROF_FILE);
  const res = await fetch(`${URL_}/ingest?format=pprof&name=${encodeURIComponent('process_cpu{job="browser-test"}')}`, {
    method: 'POST', headers: { Authorization: 'Bearer ' + tok, 'Content-Type': 'application/octet-stream' }, body,
  });
  return res.status;
}

async function shot(page, name) {
  if (!SHOTS) return;
  await page.waitForTimeout(250); // let the last paint settle
  await page.screenshot({ path: join(SHOTS, name + '.png'), fullPage: false });
}

// unlabeled lists form controls that have no accessible label.
async function unlabeled(page) {
  return page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((el) => el.type !== 'hidden' && !el.closest('[hidden]'))
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
    .map((el) => el.outerHTML.slice(0, 120)));
}

async function main() {
  mkdirSync(WORK, { recursive: true });
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
  const profileDir = mkdtempSync(join(tmpdir(), 'fleetprof-chromium-'));
  const ctx = await chromium.launchPersistentContext(profileDir, {
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1360, height: 860 },
  });
  const cleanup = () => { try { rmSync(profileDir, { recursive: true, force: true }); } catch { /* best effort */ } };
  const page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(15000);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error' && !/401|403|404|Failed to load resource/.test(m.text())) consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  let projectId = '';
  let apiToken = '', apiTokenId = '';
  let bootToken = '';
  let agentId = '';

  try {
    await step('sign-in page requires a token and rejects a wrong one', async () => {
      await page.goto(URL_ + '/');
      await page.waitForSelector('#signin-token');
      assert((await unlabeled(page)).length === 0, 'sign-in inputs are labelled');
      await shot(page, 'signin');
      await page.fill('#signin-token', 'not-a-token');
      await page.keyboard.press('Enter');
      await page.getByText('Sign-in failed').waitFor();
    });

    await step('sign in with the admin token (HttpOnly, SameSite cookie)', async () => {
      await page.fill('#signin-token', env.ADMIN_TOKEN);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Projects', exact: true }).waitFor();
      const cookies = await ctx.cookies();
      const c = cookies.find((x) => x.name === 'fleetprof_session');
      assert(c && c.httpOnly && c.sameSite === 'Strict', 'session cookie is HttpOnly and SameSite=Strict: ' + JSON.stringify(c));
      assert(!(await page.evaluate(() => document.cookie)).includes('fleetprof_session'), 'session cookie invisible to scripts');
      // A state-changing request without the CSRF header is refused.
      const status = await page.evaluate(async () => (await fetch('/api/v1/orgs', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"name":"csrf"}' })).status);
      assert(status === 403, 'POST without X-CSRF-Token → 403, got ' + status);
    });

    await step('create an organization and a project (onboarding starts)', async () => {
      await page.fill('#org-name', 'Acme');
      await page.getByRole('button', { name: 'Create organization' }).click();
      await page.getByRole('heading', { name: 'Acme' }).waitFor();
      await page.fill('#project-name', 'shop');
      await page.selectOption('#project-org', { label: 'Acme' });
      await page.getByRole('button', { name: 'Create project' }).click();
      await page.getByRole('heading', { name: 'Get started' }).waitFor();
      projectId = page.url().match(/#\/p\/([0-9a-f-]{36})/)[1];
      await page.getByText('Waiting for the first agent to connect').waitFor();
      await shot(page, 'onboarding');
    });

    await step('create an API token with the keyboard; it is shown once', async () => {
      await page.goto(`${URL_}/#/p/${projectId}/tokens`);
      await page.getByRole('heading', { name: 'API tokens', exact: true }).first().waitFor();
      assert((await unlabeled(page)).length === 0, 'token forms are labelled: ' + (await unlabeled(page)).join(' | '));
      await page.focus('#api-token-name');
      await page.keyboard.type('ci uploads');
      await page.keyboard.press('Tab');
      const focused = await page.evaluate(() => document.activeElement.textContent);
      assert(focused === 'Create token', 'Tab reaches "Create token", got ' + focused);
      await page.keyboard.press('Enter');
      const box = page.locator('#new-api-token .copybox code');
      await box.waitFor();
      apiToken = (await box.textContent()).trim();
      assert(apiToken.split('.').length === 3, 'a JWT is shown: ' + apiToken);
      await page.getByText("It won't be shown again").waitFor();
      await box.click(); // copies on click
      await page.locator('#new-api-token').getByRole('button', { name: /Copy/ }).filter({ hasText: 'Copied' }).waitFor();
      const row = page.locator('#api-tokens tr', { hasText: 'ci uploads' });
      await row.waitFor();
      apiTokenId = await row.getAttribute('data-token');
      await shot(page, 'tokens');
    });

    await step('the token is not shown again after reload', async () => {
      await page.reload();
      await page.locator('#api-tokens tr', { hasText: 'ci uploads' }).waitFor();
      assert(await page.locator('#new-api-token').count() === 0, 'no token box after reload');
      const html = await page.content();
      assert(!html.includes(apiToken), 'the token is nowhere in the page');
      const listed = await page.evaluate(async (p) => (await fetch(`/api/v1/projects/${p}/tokens`)).text(), projectId);
      assert(!listed.includes(apiToken), 'the API does not return the token again');
    });

    let ingestWired = false;
    await step('the token works: ingest accepts it (or the admin CLI lists it)', async () => {
      const status = await ingest(apiToken);
      if (status === 404 || status === 405) {
        log('  ingest is not served by this fleet yet: checking with the admin CLI');
        const list = JSON.parse(cli('token', 'list', '--project', projectId, '-o', 'json'));
        const t = list.find((x) => x.id === apiTokenId);
        assert(t && !t.revokedAt && t.name === 'ci uploads', 'CLI lists the active token');
      } else {
        assert(status >= 200 && status < 300, 'ingest with the new token → 2xx, got ' + status);
        ingestWired = true;
      }
    });

    await step('delete the token (confirm) and see it refused', async () => {
      const row = page.locator('#api-tokens tr', { hasText: 'ci uploads' });
      await row.getByRole('button', { name: /Delete token/ }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'Delete token' }).click();
      await row.locator('.badge.revoked').waitFor();
      if (ingestWired) {
        let status = 0;
        for (let i = 0; i < 50 && status !== 401; i++) { status = await ingest(apiToken); if (status !== 401) await page.waitForTimeout(100); }
        assert(status === 401, 'ingest with the deleted token → 401, got ' + status);
      }
      const list = JSON.parse(cli('token', 'list', '--project', projectId, '-o', 'json'));
      assert(list.find((x) => x.id === apiTokenId).revokedAt, 'CLI shows the token revoked');
    });

    await step('create a bootstrap token with labels; the agent command is shown', async () => {
      await page.fill('#boot-token-name', 'hosts');
      await page.fill('#boot-token-labels', 'cluster=east, team=perf');
      await page.getByRole('button', { name: 'Create bootstrap token' }).click();
      const box = page.locator('#new-boot-token .copybox code').first();
      await box.waitFor();
      bootToken = (await box.textContent()).trim();
      const cmd = await page.locator('#new-boot-token .copybox pre').first().textContent();
      assert(cmd.includes(`--fleet-address ${URL_} --bootstrap-token ${bootToken} --state-dir /var/lib/fleetprof-agent`), 'systemd command: ' + cmd);
      await page.getByRole('tab', { name: 'Kubernetes' }).click();
      assert((await page.locator('#new-boot-token .copybox pre').first().textContent()).includes('kubectl apply'), 'Kubernetes manifest shown');
      await page.locator('#boot-tokens tr', { hasText: 'hosts' }).getByText('cluster=east').waitFor();
      await shot(page, 'bootstrap-token');
    });

    await step('enroll the real agent; it appears without a reload', async () => {
      await page.goto(`${URL_}/#/p/${projectId}/agents`);
      await page.getByText('No agents yet').waitFor();
      await page.locator('.live.on').waitFor();
      await page.evaluate(() => { window.__noReload = true; });
      const agent = spawn(env.AGENT_BIN, ['--fleet-address', URL_, '--insecure', '--bootstrap-token', bootToken,
        '--state-dir', join(WORK, 'agent-state'), '--node', 'browser-node', '--platform', 'systemd', '--http-address', '', '--log-level', 'info'],
      { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(agent);
      let agentLog = '';
      agent.stdout.on('data', (d) => { agentLog += d; });
      agent.stderr.on('data', (d) => { agentLog += d; });
      try {
        await page.locator('tr[data-agent]').first().waitFor({ timeout: 30000 });
      } catch (e) {
        throw new Error('agent row did not appear; agent log:\n' + agentLog.slice(-3000));
      }
      assert(await page.evaluate(() => window.__noReload === true), 'the page did not reload');
      agentId = await page.locator('tr[data-agent]').first().getAttribute('data-agent');
      await page.locator(`tr[data-agent="${agentId}"] .badge.connected`).waitFor({ timeout: 20000 });
      await page.locator(`tr[data-agent="${agentId}"]`).getByText('cluster=east').waitFor();
      await shot(page, 'agents');
    });

    await step('filter agents by selector and status', async () => {
      await page.fill('#agents-selector', 'cluster=west');
      await page.keyboard.press('Enter');
      await page.getByText('No agents match').waitFor();
      await page.fill('#agents-selector', 'cluster=east,platform=systemd');
      await page.keyboard.press('Enter');
      await page.locator(`tr[data-agent="${agentId}"]`).waitFor();
      await page.selectOption('#agents-status', 'disconnected');
      await page.getByText('No agents match').waitFor();
      await page.selectOption('#agents-status', 'connected');
      await page.locator(`tr[data-agent="${agentId}"]`).waitFor();
    });

    await step('bulk action: assign a label to the selected agent; the selector filter finds it', async () => {
      await page.locator(`tr[data-agent="${agentId}"] input[type=checkbox]`).check();
      await page.click('#agents-assign-labels');
      await page.locator('#labels-dialog').waitFor();
      assert((await unlabeled(page)).length === 0, 'labels dialog inputs are labelled: ' + (await unlabeled(page)).join(' | '));
      await page.fill('#labels-set', 'platform=k8s');
      await page.getByRole('button', { name: 'Apply labels' }).click();
      await page.locator('#labels-set-error', { hasText: 'platform' }).waitFor();
      await page.fill('#labels-set', 'tier=gold, team=web'); // team=web overrides the token's team=perf
      await page.getByRole('button', { name: 'Apply labels' }).click();
      await page.locator(`tr[data-agent="${agentId}"] .chip.custom[data-custom="tier"]`).waitFor();
      await page.fill('#agents-selector', 'tier=silver');
      await page.keyboard.press('Enter');
      await page.getByText('No agents match').waitFor();
      await page.fill('#agents-selector', 'tier=gold');
      await page.keyboard.press('Enter');
      await page.locator(`tr[data-agent="${agentId}"]`).getByText('tier=gold').waitFor();
    });

    await step('agent page: details, rotate credentials', async () => {
      await page.locator(`tr[data-agent="${agentId}"] a`).first().click();
      await page.getByRole('heading', { name: 'Credential' }).waitFor();
      await page.locator('#agent-state .badge.connected').waitFor();
      const before = await page.locator('#agent-credential').textContent();
      await page.getByRole('button', { name: 'Rotate credentials' }).click();
      await page.locator('#agent-rotation .badge').waitFor();
      // The new credential lands live (the page updates from the event stream).
      await page.waitForFunction((b) => {
        const dd = document.querySelector('#agent-credential');
        return dd && dd.textContent !== b && document.querySelector('#agent-rotation .badge.ok');
      }, before, { timeout: 30000 });
      // The custom labels outlive the agent's new description (it reconnected with its new
      // credential) and still win over its token's label.
      await page.reload();
      await page.locator('#agent-labels .chip.custom[data-custom="tier"]', { hasText: 'tier=gold' }).waitFor();
      await page.locator('#agent-labels .chip.custom[data-custom="team"]', { hasText: 'team=web' }).waitFor();
      await page.evaluate(() => document.querySelector('.toasts')?.remove());
      await shot(page, 'agent');
    });

    await step('configs: field errors, live selector count; start a rollout and watch it progress', async () => {
      await page.goto(`${URL_}/#/p/${projectId}/rollouts`);
      const notServed = page.getByText('Rollouts are not served by this fleet');
      await Promise.race([page.locator('#cfg-yaml').waitFor(), notServed.waitFor()]);
      if (await notServed.count()) { log('  rollouts are not served by this fleet yet: skipped'); return; }
      await page.getByText('No rollouts yet').waitFor();
      await page.fill('#cfg-yaml', 'sampling:\n  frequency_hz: 100000\n  duration: 10s\n');
      const err = page.locator('#cfg-errors li[data-path="sampling.frequency_hz"]');
      await err.waitFor();
      assert((await err.textContent()).startsWith('line 2: '), 'error names the line: ' + await err.textContent());
      assert(await page.getAttribute('#cfg-yaml', 'aria-invalid') === 'true', 'editor marked invalid');
      assert(await page.getByRole('button', { name: 'Start rollout' }).isDisabled(), 'cannot start an invalid config');
      await page.fill('#cfg-yaml', 'sampling:\n  frequency_hz: 29\n  duration: 10s\nexternal_labels:\n  env: browser-test\n');
      await page.fill('#cfg-selector', 'cluster=nowhere');
      await page.getByText('matches 0 agents now').waitFor();
      await page.fill('#cfg-selector', 'cluster=east');
      await page.getByText('matches 1 agent now').waitFor();
      await page.fill('#cfg-canary', '1');
      await page.fill('#cfg-wave', '100');
      await shot(page, 'rollouts');
      await page.getByRole('button', { name: 'Start rollout' }).click();
      await page.getByRole('heading', { name: /Rollout of config v1/ }).waitFor();
      await page.locator('#rollout-stages tr[data-stage="0"]').waitFor();
      // Progress arrives live from the event stream: the canary applies and the rollout completes.
      await page.locator('#rollout-stages tr[data-stage="0"] td.applied-count', { hasText: '1' }).waitFor({ timeout: 40000 });
      await page.locator('#rollout-status .badge.completed').waitFor({ timeout: 30000 });
      await shot(page, 'rollout');
    });

    await step('versions page: the agent counted under its version and platform; roll out a release', async () => {
      // A fleet admin uploads a release (junk bytes: the rollout below targets no agent).
      const up = await page.evaluate(async () => {
        const s = await (await fetch('/api/v1/session')).json();
        const r = await fetch('/api/v1/releases?version=v9.9.9-browser&platform=linux/amd64', { method: 'POST', headers: { 'Content-Type': 'application/octet-stream', 'X-CSRF-Token': s.data.csrf }, body: 'not really an agent' });
        return r.status;
      });
      assert(up === 201, 'release upload → 201, got ' + up);
      const ag = await page.evaluate(async ([p, a]) => (await (await fetch(`/api/v1/projects/${p}/agents/${a}`)).json()).data, [projectId, agentId]);
      assert(ag.version, 'the agent reports a version');
      await page.getByRole('link', { name: 'Versions' }).click();
      await page.getByRole('heading', { name: 'Versions', exact: true }).waitFor();
      const cell = page.locator(`#versions-matrix td[data-version="${ag.version}"][data-platform="${ag.platform}"]`);
      await cell.waitFor();
      assert(await cell.getAttribute('data-agents') === '1', 'one agent counted under ' + ag.version + ' × ' + ag.platform);
      await page.locator('#releases tr[data-release="v9.9.9-browser"]').waitFor();
      assert((await unlabeled(page)).length === 0, 'roll-out form is labelled: ' + (await unlabeled(page)).join(' | '));
      await page.selectOption('#rel-version', 'v9.9.9-browser');
      await page.fill('#rel-selector', 'tier=none');
      await page.getByRole('button', { name: 'Roll out version' }).click();
      await page.locator('#release-rollouts tr[data-release-rollout]', { hasText: 'v9.9.9-browser' }).waitFor();
      await page.evaluate(() => document.querySelector('.toasts')?.remove());
      await shot(page, 'versions');
    });

    await step('profiles: a flame graph of real samples with the workload function', async () => {
      await page.goto(`${URL_}/#/p/${projectId}/profiles`);
      const deadline = Date.now() + Number(env.PROFILE_WAIT_MS || 40000);
      let found = '';
      const wanted = [env.WORKLOAD_FUNC, env.PPROF_FUNC].filter(Boolean);
      for (;;) {
        const notServed = await page.getByText('does not serve profiles').count();
        if (notServed) { log('  profiles are not served by this fleet yet: skipped'); return; }
        if (await page.locator('.flame .frame').count()) {
          for (const f of wanted) {
            await page.fill('#prof-search', f);
            if (await page.locator('.flame .frame.match').count()) { found = f; break; }
          }
          if (found === env.WORKLOAD_FUNC || (found && Date.now() > deadline)) break;
        }
        if (Date.now() > deadline) break;
        await page.waitForTimeout(2000);
        await page.getByRole('button', { name: 'Run query' }).click();
        await page.waitForTimeout(500);
      }
      assert(found, `a frame named ${wanted.join(' or ')} in the flame graph`);
      if (found !== env.WORKLOAD_FUNC) log(`  the agent's own samples did not arrive in time; found the ingested ${found}`);
      const info = await page.locator('#prof-search-info').textContent();
      assert(/% of total/.test(info), 'search shows the share of total: ' + info);
      // Zoom into the match and read its tooltip.
      const frame = page.locator('.flame .frame.match').first();
      await frame.hover();
      await page.locator('.tooltip:not([hidden])').getByText('% of total').waitFor();
      await frame.click();
      assert(await page.locator('#prof-download').getAttribute('href'), 'download pprof link');
      await page.fill('#prof-search', found);
      await shot(page, 'profiles');
    });

    await step('audit log shows the actions', async () => {
      await page.goto(`${URL_}/#/audit`);
      await page.getByRole('cell', { name: 'token.create' }).first().waitFor();
      await page.getByRole('cell', { name: 'token.delete' }).first().waitFor();
      await page.getByRole('cell', { name: 'agent.rotate' }).first().waitFor();
      await shot(page, 'audit');
    });

    let viewerKey = '';
    await step('create a viewer user', async () => {
      await page.goto(`${URL_}/#/admin`);
      await page.fill('#user-name', 'vera');
      await page.selectOption('#user-org', { label: 'Acme' });
      await page.selectOption('#user-role', 'viewer');
      await page.getByRole('button', { name: 'Create user' }).click();
      const box = page.locator('.secret .copybox code');
      await box.waitFor();
      viewerKey = (await box.textContent()).trim();
      assert(viewerKey.startsWith('fpu_'), 'access key shown: ' + viewerKey);
      await page.getByRole('cell', { name: 'vera', exact: true }).waitFor();
      await shot(page, 'users');
    });

    await step('a viewer sees but cannot create tokens or rotate', async () => {
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.waitForSelector('#signin-token');
      await page.fill('#signin-token', viewerKey);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Projects', exact: true }).waitFor();
      await page.goto(`${URL_}/#/p/${projectId}/tokens`);
      await page.locator('#boot-tokens tr', { hasText: 'hosts' }).waitFor();
      assert(await page.getByRole('button', { name: 'Create token' }).count() === 0, 'no Create token button');
      assert(await page.getByRole('button', { name: /Delete token/ }).count() === 0, 'no Delete buttons');
      const codes = await page.evaluate(async ([p, a]) => {
        const s = await (await fetch('/api/v1/session')).json();
        const hdr = { 'Content-Type': 'application/json', 'X-CSRF-Token': s.data.csrf };
        const t = await fetch(`/api/v1/projects/${p}/tokens`, { method: 'POST', headers: hdr, body: '{"name":"x","scope":"write-profiles"}' });
        const r = await fetch(`/api/v1/projects/${p}/agents/${a}/rotate`, { method: 'POST', headers: hdr });
        const l = await fetch(`/api/v1/projects/${p}/agents`);
        return [t.status, r.status, l.status];
      }, [projectId, agentId]);
      assert(JSON.stringify(codes) === '[403,403,200]', 'viewer: create token 403, rotate 403, list 200; got ' + codes);
      await page.goto(`${URL_}/#/p/${projectId}/agents/${agentId}`);
      await page.getByRole('heading', { name: 'Credential' }).waitFor();
      assert(await page.getByRole('button', { name: 'Rotate credentials' }).count() === 0, 'no rotate button for a viewer');
      assert(await page.getByRole('button', { name: 'Edit labels' }).count() === 0, 'no label editing for a viewer');
      await page.goto(`${URL_}/#/p/${projectId}/versions`);
      await page.locator('#versions-matrix td[data-agents="1"]').waitFor();
      assert(await page.locator('#release-rollout-form').count() === 0, 'no roll-out form for a viewer');
      const lc = await page.evaluate(async ([p, a]) => {
        const s = await (await fetch('/api/v1/session')).json();
        const r = await fetch(`/api/v1/projects/${p}/agents/labels`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.data.csrf }, body: JSON.stringify({ ids: [a], set: { x: 'y' } }) });
        return r.status;
      }, [projectId, agentId]);
      assert(lc === 403, 'viewer: assign labels → 403, got ' + lc);
    });

    await step('no script errors on any page', async () => {
      assert(consoleErrors.length === 0, 'console errors: ' + consoleErrors.join('\n'));
    });
  } finally {
    for (const c of children) { try { c.kill('SIGTERM'); } catch { /* gone */ } }
    await ctx.close();
    cleanup();
  }
  console.log(`${passed} passed, 0 failed`);
}

main().catch((e) => {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  console.log(`${passed} passed, 1 failed`);
  console.error(e && e.message ? e.message : e);
  process.exit(1);
});

// idforge arena page: asks the server for a pair, shows it, sends the answer, repeats.
// The rater token lives in localStorage, so a reload (or a server restart) continues the same
// session; the server re-sends a pair that was shown and not answered.
'use strict';
(() => {
  const STORAGE_KEY = 'idforge-arena-rater';
  const $ = (id) => document.getElementById(id);
  const buttons = Array.from(document.querySelectorAll('.answer'));
  const KEYS = {
    ArrowLeft: 'left', '1': 'left',
    ArrowRight: 'right', '2': 'right',
    t: 'tie', T: 'tie', '3': 'tie',
    n: 'neither', N: 'neither', '4': 'neither',
  };

  let rater = null;
  try { rater = localStorage.getItem(STORAGE_KEY); } catch (e) { rater = null; }
  let task = null;
  let shownAt = 0;
  let ready = false;
  let sending = false;
  let shown = 0; // pairs rendered by this page load (tests wait on it)

  function setState(state) { document.body.dataset.state = state; }
  function show(id) {
    for (const s of ['intro', 'task', 'done']) $(s).hidden = s !== id;
  }
  function setButtons(on) {
    ready = on;
    for (const b of buttons) b.disabled = !on;
  }
  function showError(message) {
    const e = $('error');
    e.textContent = message;
    e.hidden = !message;
  }
  function saveRater(token) {
    rater = token;
    try {
      if (token) localStorage.setItem(STORAGE_KEY, token); else localStorage.removeItem(STORAGE_KEY);
    } catch (e) { /* private mode: the session lasts as long as the page */ }
  }

  async function api(path, body) {
    const headers = { Accept: 'application/json' };
    if (rater) headers.Authorization = 'Bearer ' + rater;
    if (body) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, {
        method: 'POST', headers, cache: 'no-store',
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      const err = new Error('The server cannot be reached. Check your connection, then reload the page.');
      err.status = 0;
      throw err;
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const detail = data && data.error ? data.error : { code: 'http', message: 'HTTP ' + response.status };
      const err = new Error(detail.message);
      err.status = response.status;
      err.code = detail.code;
      throw err;
    }
    return data;
  }

  async function newRater() {
    const r = await api('/api/raters');
    saveRater(r.rater);
  }

  function loaded(img, src) {
    return new Promise((resolve) => {
      img.onload = () => resolve(true);
      img.onerror = () => resolve(false);
      img.src = src;
    });
  }

  async function render(data) {
    $('progress').textContent = data.answered === 1 ? '1 answer' : data.answered + ' answers';
    if (data.done) {
      task = null;
      setButtons(false);
      show('done');
      setState('done');
      return;
    }
    task = data.task;
    const practice = $('practice');
    practice.hidden = !task.practice;
    practice.textContent = task.practice
      ? 'Practice ' + task.practice_number + ' of ' + task.practice_total + ': this answer is not counted.'
      : '';
    $('instruction').textContent = task.instruction;
    $('reference-box').hidden = !task.reference;
    $('prompt').hidden = !task.prompt;
    $('prompt').textContent = task.prompt ? '“' + task.prompt + '”' : '';
    show('task');
    const waits = [loaded($('left'), task.left), loaded($('right'), task.right)];
    if (task.reference) waits.push(loaded($('reference'), task.reference));
    else $('reference').removeAttribute('src');
    const ok = await Promise.all(waits);
    if (ok.includes(false)) showError('An image did not load. If one is missing, answer “Neither fits”.');
    shownAt = performance.now();
    shown += 1;
    document.body.dataset.shown = String(shown);
    setButtons(true);
    setState('ready');
  }

  async function next() {
    setButtons(false);
    setState('loading');
    let data;
    try {
      if (!rater) await newRater();
      data = await api('/api/task');
    } catch (e) {
      if (e.status !== 401) throw e;
      // Unknown or expired rater (another database, or too old): start a new session.
      saveRater(null);
      await newRater();
      data = await api('/api/task');
    }
    await render(data);
  }

  async function answer(choice) {
    if (!task || !ready || sending) return;
    sending = true;
    setButtons(false);
    setState('sending');
    const ms = Math.max(0, Math.round(performance.now() - shownAt));
    try {
      await api('/api/vote', { token: task.token, question: task.question, answer: choice, answer_ms: ms });
      showError('');
    } catch (e) {
      // A pair answered in another tab, or left open too long, is simply skipped.
      const skip = ['already_answered', 'duplicate_vote', 'task_expired', 'unknown_task'];
      if (!skip.includes(e.code)) {
        showError(e.message);
        sending = false;
        setButtons(true);
        setState('ready');
        return;
      }
    }
    sending = false;
    try { await next(); } catch (e) { showError(e.message); setState('error'); }
  }

  for (const b of buttons) b.addEventListener('click', () => answer(b.dataset.answer));
  document.addEventListener('keydown', (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.repeat) return;
    const choice = KEYS[e.key];
    if (!choice || $('task').hidden) return;
    e.preventDefault();
    answer(choice);
  });
  $('start').addEventListener('click', () => {
    next().catch((e) => { showError(e.message); setState('error'); });
  });

  if (rater) {
    next().catch((e) => { showError(e.message); setState('error'); });
  } else {
    $('progress').textContent = '';
    show('intro');
    setState('intro');
  }
})();

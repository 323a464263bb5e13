// The Image Enhancer page: a queue of photos sent one by one (two at a time) to /enhance, each
// result shown in a before/after comparison with zoom, and downloaded singly or all as a zip.
// Plain modern JavaScript, no build step; one vendored library, fflate (static/vendor/), builds the
// zip. Served from the app itself (the CSP allows only scripts from this origin, so nothing here may
// be inline or come from a CDN).
/* global fflate */
'use strict';

(() => {
  const config = JSON.parse(document.getElementById('page-config').textContent);

  // Two requests in flight: one uploads or downloads while the other is being enhanced.
  const CONCURRENCY = 2;
  // A busy service (503 ServiceBusy) is asked again this many times, after its Retry-After.
  const BUSY_RETRIES = 2;
  // Over the page's per-client rate limit (429 TooManyRequests): waited out this many times.
  const LIMIT_RETRIES = 5;
  // What to wait, and what to say, for each answer that means "later".
  const LATER = {
    ServiceBusy: { retries: BUSY_RETRIES, text: 'Service busy' },
    TooManyRequests: { retries: LIMIT_RETRIES, text: 'Too many uploads at once' },
  };
  const ZOOMS = [0, 1, 2]; // 0 = fit; otherwise CSS pixels per output pixel
  const EXTENSIONS = config.extensions; // content type -> file name extension (enhancer.contract)
  // What went wrong, in words, by the JSON error's type; the server's message follows it.
  const LABELS = {
    PayloadTooLarge: 'Too large',
    UnsupportedMediaType: 'Not an image',
    BadRequest: 'Cannot process this file',
    Forbidden: 'Refused',
    ServiceBusy: 'Service busy',
    TooManyRequests: 'Too many uploads',
    RequestTimeout: 'Upload too slow',
    ServiceUnavailable: 'Service down',
    BadGateway: 'The service failed',
    WorkerDied: 'The service crashed',
    GatewayTimeout: 'Timed out',
    InternalServerError: 'Page error',
    Network: 'Connection failed',
  };
  const TYPES_BY_STATUS = {
    400: 'BadRequest', 403: 'Forbidden', 408: 'RequestTimeout', 413: 'PayloadTooLarge',
    415: 'UnsupportedMediaType', 429: 'TooManyRequests',
    500: 'InternalServerError', 502: 'BadGateway', 503: 'ServiceUnavailable', 504: 'GatewayTimeout',
  };
  const ACTIVE = new Set(['uploading', 'processing', 'downloading']);

  const dropzone = document.getElementById('dropzone');
  const fileInput = document.getElementById('file-input');
  const queue = document.getElementById('queue');
  const queueEmpty = document.getElementById('queue-empty');
  const template = document.getElementById('item-template');
  const downloadAll = document.getElementById('download-all');
  const clearDone = document.getElementById('clear-done');
  const optionsForm = document.getElementById('options');
  const quality = document.getElementById('opt-quality');
  const qualityValue = document.getElementById('quality-value');
  const format = document.getElementById('opt-format');
  const denoise = document.getElementById('opt-denoise');
  const denoiseValue = document.getElementById('denoise-value');
  const model = document.getElementById('opt-model');
  const modelHelp = document.getElementById('model-help');
  const service = document.getElementById('service');

  const items = [];

  // -- adding photos ------------------------------------------------------------------------------

  dropzone.addEventListener('click', () => fileInput.click());
  fileInput.addEventListener('change', () => {
    addFiles(fileInput.files);
    fileInput.value = ''; // choosing the same file again must fire 'change' again
  });

  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes('Files');
  // The whole window is a drop target: a photo dropped beside the zone must not replace the page.
  document.addEventListener('dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
    dropzone.classList.add('dragging');
  });
  document.addEventListener('dragleave', (event) => {
    if (!event.relatedTarget) dropzone.classList.remove('dragging');
  });
  document.addEventListener('drop', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dropzone.classList.remove('dragging');
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener('paste', (event) => {
    const files = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });

  function addFiles(fileList) {
    for (const file of Array.from(fileList)) {
      const item = createItem(file);
      items.push(item);
      queue.append(item.el);
      if (file.size > config.maxBytes) {
        fail(item, 'PayloadTooLarge', `The file is ${formatBytes(file.size)}; the limit is ${config.maxText}.`);
      }
    }
    refreshQueue();
    pump();
  }

  // -- options ------------------------------------------------------------------------------------

  function currentOptions() {
    const data = new FormData(optionsForm);
    const options = {
      scale: data.get('scale'), format: data.get('format'), level: data.get('level'), metadata: data.get('metadata'),
    };
    if (options.format !== 'png') options.quality = data.get('quality');
    if (data.get('enhance_first')) options.enhance_first = 'true';
    options.faces = data.get('faces') ? 'auto' : 'off';
    if (model.value) options.model = model.value;
    else if (!denoise.disabled) options.denoise = String(config.denoiseLevels[Number(denoise.value)]);
    return options;
  }

  // The model menu comes from the service (GET /models: the worker's own list of its models and
  // their cards' measured quality); until it answers, or if it cannot, only the default is offered.
  const models = {};
  function qualityText(entry) {
    if (!entry.quality || !entry.quality.length) return 'quality not measured';
    return entry.quality.slice(0, 3).map((row) => {
      const set = String(row.set || '').toUpperCase();
      const track = row.track && row.track !== 'bicubic' ? ` ${row.track.replace('_', '-')}` : '';
      const vs = typeof row.bicubic_psnr === 'number' ? ` (bicubic ${row.bicubic_psnr.toFixed(2)})` : '';
      return `${set} ×${row.scale}${track}: ${Number(row.psnr).toFixed(2)} dB${vs}`;
    }).join('; ');
  }
  function syncModel() {
    const entry = models[model.value];
    denoise.closest('label').hidden = Boolean(entry);
    modelHelp.textContent = entry
      ? `${entry.name} ${entry.version}, ${entry.scale}× model: ${qualityText(entry)}.`
      : 'The default model, with the Clean-up level below.';
  }
  model.addEventListener('change', syncModel);
  fetch(config.modelsUrl, { headers: { Accept: 'application/json' } })
    .then((response) => (response.ok ? response.json() : null))
    .then((listing) => {
      if (!listing || !Array.isArray(listing.models)) return;
      for (const entry of listing.models) {
        if (!listing.pair && entry.default) continue; // the one default model is "Default"
        models[entry.name] = entry;
        const option = document.createElement('option');
        option.value = entry.name;
        option.textContent = `${entry.name} (${entry.scale}×)`;
        model.append(option);
      }
      syncModel();
    })
    .catch(() => {});

  // The clean-up slider steps through the levels the server blends (enhancer.contract).
  const DENOISE_WORDS = ['none', 'light', 'medium', 'strong', 'full'];
  function syncDenoise() {
    const level = config.denoiseLevels[Number(denoise.value)];
    denoiseValue.textContent = DENOISE_WORDS[Number(denoise.value)] || String(level);
  }
  denoise.addEventListener('input', syncDenoise);
  syncDenoise();

  // A server with one model (no clean/restore pair) refuses the option: say so, stop sending it.
  function noDenoise(message) {
    denoise.disabled = true;
    denoiseValue.textContent = 'not available';
    document.getElementById('denoise-help').textContent = message;
  }

  function syncQuality() {
    qualityValue.textContent = quality.value;
    quality.disabled = format.value === 'png';
  }
  quality.addEventListener('input', syncQuality);
  format.addEventListener('change', syncQuality);
  syncQuality();

  // -- one queue item -----------------------------------------------------------------------------

  function createItem(file) {
    const el = template.content.firstElementChild.cloneNode(true);
    const part = (selector) => el.querySelector(selector);
    const item = {
      file,
      el,
      state: 'queued',
      options: currentOptions(),
      waits: {}, // retries so far after an answer that means "later", by its type
      suggestedScale: null, // the largest scale the service said fits, after a 413 for too much work
      xhr: null,
      input: { url: URL.createObjectURL(file), width: 0, height: 0 },
      result: null,
      zoom: 0,
      parts: {
        name: part('.name'), sizes: part('.sizes'), statusText: part('.status-text'), progress: part('.progress'),
        error: part('.error'), result: part('.result'), viewport: part('.viewport'), stage: part('.stage'),
        before: part('.before'), after: part('.after'), split: part('.split'), zoom: part('.zoom'),
        download: part('.download'), compare: part('.download-compare'), remove: part('.remove'),
        retry: part('.retry'),
      },
    };
    // Names are shown as text, never as markup: a file may be called "<img src=x onerror=...>.png".
    item.parts.name.textContent = file.name || 'pasted image';
    item.parts.name.title = file.name || '';
    item.parts.remove.setAttribute('aria-label', `Remove ${file.name || 'pasted image'}`);
    showSizes(item);
    setStatus(item, 'queued', 'Waiting', null);

    // The original's pixel size, if this browser can decode it (the service decides either way).
    const probe = new Image();
    probe.src = item.input.url;
    probe.decode().then(() => {
      item.input.width = probe.naturalWidth;
      item.input.height = probe.naturalHeight;
      showSizes(item);
    }, () => {});

    item.parts.remove.addEventListener('click', () => removeItem(item));
    item.parts.compare.addEventListener('click', () => downloadCompare(item));
    item.parts.retry.addEventListener('click', () => {
      item.options = currentOptions();
      // After "too much work", the retry asks for the largest scale the service said fits.
      if (item.suggestedScale) item.options.scale = String(item.suggestedScale);
      item.suggestedScale = null;
      item.parts.retry.textContent = 'Try again';
      item.waits = {};
      item.parts.error.hidden = true;
      item.parts.retry.hidden = true;
      setStatus(item, 'queued', 'Waiting', null);
      pump();
    });
    item.parts.split.addEventListener('input', () => setSplit(item, item.parts.split.value));
    item.parts.zoom.addEventListener('click', () => setZoom(item, ZOOMS[(ZOOMS.indexOf(item.zoom) + 1) % ZOOMS.length]));
    item.parts.viewport.addEventListener('keydown', (event) => {
      if (event.key === '+' || event.key === '=') setZoom(item, Math.min(item.zoom + 1, ZOOMS[ZOOMS.length - 1]));
      else if (event.key === '-') setZoom(item, Math.max(item.zoom - 1, 0));
      else return;
      event.preventDefault();
    });
    // Pointer on the picture moves the split too (the range input is the keyboard's way).
    const follow = (event) => {
      if (event.type === 'pointermove' && !(event.buttons & 1)) return;
      const box = item.parts.stage.getBoundingClientRect();
      const percent = Math.round(((event.clientX - box.left) / box.width) * 100);
      item.parts.split.value = String(Math.min(100, Math.max(0, percent)));
      setSplit(item, item.parts.split.value);
    };
    item.parts.stage.addEventListener('pointerdown', follow);
    item.parts.stage.addEventListener('pointermove', follow);
    return item;
  }

  function setStatus(item, state, text, percent) {
    item.state = state;
    item.el.dataset.state = state;
    item.parts.statusText.textContent = text;
    const bar = item.parts.progress;
    bar.hidden = state === 'done' || state === 'error';
    if (percent === null) bar.removeAttribute('value'); // indeterminate
    else bar.value = percent;
    refreshQueue();
  }

  function fail(item, type, message) {
    const label = LABELS[type] || 'Failed';
    setStatus(item, 'error', 'Failed', null);
    item.parts.error.textContent = `${label}: ${message}`;
    item.parts.error.dataset.type = type;
    item.parts.error.hidden = false;
    // Trying the same file again only helps when the service or the options were the problem.
    const hopeless = type === 'UnsupportedMediaType' || type === 'Forbidden'
      || (type === 'PayloadTooLarge' && item.file.size > config.maxBytes);
    item.parts.retry.hidden = hopeless;
  }

  function showSizes(item) {
    const input = item.input.width ? `${item.input.width}×${item.input.height} px, ` : '';
    let text = `${input}${formatBytes(item.file.size)}`;
    if (item.result) {
      const kind = (EXTENSIONS[item.result.type] || '').toUpperCase();
      const auto = item.options.scale === 'auto' ? ` (auto: ${item.scaleUsed}×)` : '';
      text += ` → ${item.result.width}×${item.result.height} px${auto}, ${formatBytes(item.result.blob.size)} ${kind}`;
    }
    item.parts.sizes.textContent = text;
  }

  function removeItem(item) {
    if (item.xhr) item.xhr.abort();
    URL.revokeObjectURL(item.input.url);
    if (item.result) URL.revokeObjectURL(item.result.url);
    items.splice(items.indexOf(item), 1);
    item.el.remove();
    item.state = 'removed';
    refreshQueue();
    pump();
  }

  function refreshQueue() {
    queueEmpty.hidden = items.length > 0;
    // Photos still on this computer: how many go before each (two are sent at a time).
    let before = items.filter((item) => ACTIVE.has(item.state)).length;
    for (const item of items) {
      if (item.state !== 'queued') continue;
      item.parts.statusText.textContent = before
        ? `Waiting to upload (${before} photo${before === 1 ? '' : 's'} before it)` : 'Waiting';
      before += 1;
    }
    downloadAll.disabled = !items.some((item) => item.state === 'done');
    clearDone.disabled = !items.some((item) => item.state === 'done' || item.state === 'error');
  }

  // -- sending ------------------------------------------------------------------------------------

  function pump() {
    let active = items.filter((item) => ACTIVE.has(item.state)).length;
    for (const item of items) {
      if (active >= CONCURRENCY) break;
      if (item.state === 'queued') {
        send(item);
        active += 1;
      }
    }
  }

  function send(item) {
    const form = new FormData();
    // The name stays on this computer; the server identifies the image by its bytes anyway.
    form.append('image', item.file, 'upload');
    for (const [name, value] of Object.entries(item.options)) form.append(name, value);
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open('POST', config.enhanceUrl);
    // The ticket names this upload when asking the page where it stands in its queue.
    item.ticket = newTicket();
    xhr.setRequestHeader(config.ticketHeader, item.ticket);
    xhr.responseType = 'blob';
    xhr.upload.addEventListener('progress', (event) => {
      if (event.lengthComputable) {
        const percent = Math.floor((event.loaded / event.total) * 100);
        setStatus(item, 'uploading', `Uploading ${percent}%`, percent);
      }
    });
    xhr.upload.addEventListener('load', () => {
      setStatus(item, 'processing', 'In the queue…', null);
      watchQueue(item, xhr);
    });
    xhr.addEventListener('progress', (event) => {
      if (xhr.status === 200 && event.lengthComputable) {
        const percent = Math.floor((event.loaded / event.total) * 100);
        setStatus(item, 'downloading', `Downloading ${percent}%`, percent);
      }
    });
    xhr.addEventListener('load', () => {
      item.xhr = null;
      received(item, xhr).finally(pump);
    });
    xhr.addEventListener('error', () => {
      item.xhr = null;
      fail(item, 'Network', "The connection to the page's server broke off. Check the connection and try again.");
      checkHealth();
      pump();
    });
    setStatus(item, 'uploading', 'Uploading 0%', 0);
    item.started = performance.now();
    xhr.send(form);
  }

  function newTicket() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function seconds(value) {
    const s = Math.max(1, Math.round(value));
    return s < 120 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  // While the service works on an upload, ask the page every second where it stands: its place
  // in the queue to the service and the expected seconds until its result (GET /queue).
  async function watchQueue(item, xhr) {
    while (item.xhr === xhr && item.state === 'processing') {
      let ticket = null;
      try {
        const answer = await fetch(`${config.queueUrl}?ticket=${encodeURIComponent(item.ticket)}`,
          { cache: 'no-store' });
        if (answer.ok) ticket = (await answer.json()).ticket;
      } catch (error) {
        ticket = null; // the answer to the upload itself will say what went wrong
      }
      if (item.xhr !== xhr || item.state !== 'processing') return;
      if (ticket) setStatus(item, 'processing', queueText(ticket), null);
      await new Promise((resolve) => { setTimeout(resolve, 1000); });
    }
  }

  function queueText(ticket) {
    const wait = ticket.wait === null ? '' : ` · result in about ${seconds(ticket.wait)}`;
    if (ticket.running) return `Enhancing (place ${ticket.place} of ${ticket.of})${wait}`;
    return `Place ${ticket.place} of ${ticket.of} in the queue${wait}`;
  }

  async function received(item, xhr) {
    if (item.state === 'removed') return;
    if (xhr.status === 200) {
      // scale=auto: the service says which scale it chose
      item.scaleUsed = xhr.getResponseHeader('X-Enhance-Scale-Used') || item.options.scale;
      await showResult(item, xhr.response, (xhr.getResponseHeader('Content-Type') || '').split(';')[0]);
      return;
    }
    let body = null;
    try {
      body = JSON.parse(await xhr.response.text());
    } catch (error) {
      body = null; // a proxy's HTML error page, say: fall back to the status
    }
    const type = (body && body.type) || TYPES_BY_STATUS[xhr.status] || 'BadGateway';
    const message = (body && body.message) || `The server answered ${xhr.status}.`;
    const later = LATER[type];
    if (later && (item.waits[type] || 0) < later.retries) {
      item.waits[type] = (item.waits[type] || 0) + 1;
      const wait = Math.min(Number(xhr.getResponseHeader('Retry-After')) || 5, 60);
      // The page's own "busy" says how long this photo would have waited, and its limit.
      const why = body && typeof body.expected_wait === 'number'
        ? ` (about ${seconds(body.expected_wait)} expected, the page waits at most ${seconds(body.limit)})`
        : '';
      setStatus(item, 'waiting', `${later.text}${why}: trying again in ${wait} s…`, null);
      setTimeout(() => {
        if (item.state === 'waiting') {
          setStatus(item, 'queued', 'Waiting', null);
          pump();
        }
      }, wait * 1000);
      return;
    }
    if (type === 'BadRequest' && 'denoise' in item.options && message.startsWith("option 'denoise'")
        && message.includes('one model')) {
      // the slider was only this page's default: send the photo again without it
      noDenoise('This server runs one model: it enlarges and sharpens, without a separate clean-up.');
      delete item.options.denoise;
      setStatus(item, 'queued', 'Waiting', null);
      pump();
      return;
    }
    fail(item, type, later ? `${message} Try again in a minute.` : message);
    // Too much work for the time the service allows: offer the largest scale that fits.
    if (type === 'PayloadTooLarge' && body && typeof body.max_scale === 'number') {
      item.suggestedScale = body.max_scale;
      item.parts.retry.textContent = `Try at ${body.max_scale}×`;
    }
    if (type === 'ServiceUnavailable' || type === 'BadGateway' || type === 'WorkerDied') checkHealth();
  }

  async function showResult(item, blob, type) {
    const url = URL.createObjectURL(blob);
    const after = item.parts.after;
    after.src = url;
    try {
      await after.decode();
    } catch (error) {
      URL.revokeObjectURL(url);
      fail(item, 'BadGateway', 'The result could not be shown: it is not an image this browser can read.');
      return;
    }
    item.result = { blob, url, type, width: after.naturalWidth, height: after.naturalHeight };
    item.parts.before.src = item.input.url;
    item.parts.before.addEventListener('error', () => { item.parts.before.hidden = true; });
    const stage = item.parts.stage;
    stage.style.aspectRatio = `${item.result.width} / ${item.result.height}`;
    stage.style.setProperty('--ratio', String(item.result.width / item.result.height));
    stage.style.setProperty('--natural', `${item.result.width}px`);
    setSplit(item, item.parts.split.value);
    setZoom(item, 0);
    const link = item.parts.download;
    link.href = url;
    link.download = resultName(item);
    link.setAttribute('aria-label', `Download ${link.download}`);
    item.parts.result.hidden = false;
    showSizes(item);
    const seconds = ((performance.now() - item.started) / 1000).toFixed(1);
    setStatus(item, 'done', `Done in ${seconds} s`, null);
    if (service.dataset.state !== 'ready') checkHealth(); // it works again: say so
  }

  function setSplit(item, value) {
    item.parts.stage.style.setProperty('--split', `${value}%`);
    item.parts.split.setAttribute('aria-valuetext', `${value}% original, ${100 - value}% enhanced`);
  }

  function setZoom(item, zoom) {
    item.zoom = zoom;
    const stage = item.parts.stage;
    stage.classList.toggle('fit', zoom === 0);
    stage.style.width = zoom === 0 || !item.result ? '' : `${item.result.width * zoom}px`;
    item.parts.zoom.textContent = zoom === 0 ? 'Zoom: fit' : `Zoom: ${zoom * 100}%`;
    item.parts.zoom.setAttribute('aria-label', zoom === 0
      ? 'Zoom: fit to width. Press for 100%.'
      : `Zoom: ${zoom * 100}%. Press for ${zoom === ZOOMS[ZOOMS.length - 1] ? 'fit' : `${(zoom + 1) * 100}%`}.`);
    item.el.dataset.zoom = String(zoom);
  }

  function resultName(item) {
    const stem = (item.file.name || 'pasted').replace(/\.[^.]*$/, '').replace(/[^\w.-]+/g, '_').slice(0, 80) || 'image';
    const ext = EXTENSIONS[item.result.type] || 'png';
    return `${stem}-x${item.scaleUsed || item.options.scale}.${ext}`;
  }

  // The side-by-side image (compare=true: the plain resize and the result, labelled), asked for
  // only when wanted: one more request with the same options.
  async function downloadCompare(item) {
    const button = item.parts.compare;
    const form = new FormData();
    form.append('image', item.file, 'upload');
    for (const [name, value] of Object.entries({ ...item.options, scale: item.scaleUsed || item.options.scale })) {
      form.append(name, value);
    }
    form.append('compare', 'true');
    button.disabled = true;
    button.textContent = 'Making side by side…';
    try {
      const response = await fetch(config.enhanceUrl, { method: 'POST', body: form });
      if (!response.ok) {
        let message = `The server answered ${response.status}.`;
        try {
          message = (await response.json()).message || message;
        } catch (error) {
          // not JSON: keep the status
        }
        throw new Error(message);
      }
      const blob = await response.blob();
      const link = document.createElement('a');
      link.href = URL.createObjectURL(blob);
      link.download = resultName(item).replace(/(\.[^.]*)$/, '-compare$1');
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
      button.textContent = 'Download side by side';
    } catch (error) {
      button.textContent = 'Side by side failed: try again';
      item.parts.error.textContent = `Side by side: ${error.message}`;
      item.parts.error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  // -- download all, clear ------------------------------------------------------------------------

  downloadAll.addEventListener('click', async () => {
    const done = items.filter((item) => item.state === 'done');
    const used = new Set();
    const entries = done.map((item) => {
      let name = resultName(item);
      for (let n = 2; used.has(name); n += 1) name = resultName(item).replace(/(\.[^.]*)$/, `-${n}$1`);
      used.add(name);
      return { name, blob: item.result.blob };
    });
    downloadAll.disabled = true;
    try {
      const zip = await makeZip(entries);
      const link = document.createElement('a');
      link.href = URL.createObjectURL(zip);
      link.download = 'enhanced-photos.zip';
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    } catch (error) {
      service.textContent = `Could not make the zip: ${error.message}`;
    } finally {
      refreshQueue();
    }
  });

  clearDone.addEventListener('click', () => {
    for (const item of items.filter((it) => it.state === 'done' || it.state === 'error')) removeItem(item);
  });

  // -- the zip: fflate (frontend/static/vendor), entries stored (images are compressed already) ---

  async function makeZip(entries) {
    const mtime = new Date();
    const files = {};
    for (const { name, blob } of entries) {
      files[name] = [new Uint8Array(await blob.arrayBuffer()), { level: 0, mtime }];
    }
    return new Blob([fflate.zipSync(files)], { type: 'application/zip' });
  }

  // -- the service's health -----------------------------------------------------------------------

  async function checkHealth() {
    let state = 'down';
    let text = "Service down: the page's server does not answer.";
    try {
      const response = await fetch(config.healthUrl, { cache: 'no-store' });
      const report = await response.json();
      if (response.ok) {
        state = 'ready';
        text = 'Service ready.';
      } else {
        text = `Service down: ${report.message || 'not ready'}`;
      }
    } catch (error) {
      // keep the default text
    }
    service.dataset.state = state;
    service.textContent = text;
  }
  checkHealth();
  setInterval(() => { if (document.visibilityState === 'visible') checkHealth(); }, 30000);

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  refreshQueue();
})();

// vipavatar demo page logic: upload the portrait, wait for its precompute, generate with the
// chosen or recorded audio, play the live fragmented MP4 through MediaSource (fetch sends the
// X-API-Key, which a plain <video src> could not), poll the session for timings, show cache stats.
// The last run's state is on window.vipDemo (session id, page timings) for people and tests.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("form"), image: $("image"), preprocess: $("preprocess"), preview: $("portrait-preview"),
    avatarState: $("avatar-state"), audio: $("audio"), record: $("record"), recordState: $("record-state"),
    recording: $("recording"), quality: $("quality"), still: $("still"), apiKey: $("api-key"),
    generate: $("generate"), error: $("error"), video: $("video"), sessionState: $("session-state"),
    unmute: $("unmute"), download: $("download"), progress: $("progress"), stages: $("stages").tBodies[0],
    sessionCache: $("session-cache"), cacheSummary: $("cache-summary"), cacheTable: $("cache-table").tBodies[0],
  };
  const demo = (window.vipDemo = { sessionId: null, status: null, pageFirstFrameMs: null, pageFirstBytesMs: null, codec: null });
  const KEY_STORE = "vipavatar.apiKey";
  let recorded = null; // Blob from the microphone, used when newer than the file input's choice

  el.apiKey.value = localStorage.getItem(KEY_STORE) || "";
  el.apiKey.addEventListener("change", () => localStorage.setItem(KEY_STORE, el.apiKey.value.trim()));

  function headers() {
    const key = el.apiKey.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // An Error from an API answer's {message, code, type} body (or whatever the body was).
  async function apiError(resp, what) {
    let text = await resp.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && body.message) text = body.message + " (" + body.code + ", HTTP " + resp.status + ")";
    } catch (_) {
      text = "HTTP " + resp.status + (text ? ": " + text.slice(0, 200) : "");
    }
    return new Error(what + " failed: " + text);
  }

  async function api(path, what, init = {}) {
    const resp = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
    if (!resp.ok) throw await apiError(resp, what);
    return resp.json();
  }

  function showError(err) {
    el.error.textContent = err && err.message ? err.message : String(err);
    el.error.hidden = false;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const ms = (v) => (v == null ? "–" : Math.round(v) + " ms");
  const secs = (v) => (v == null ? "–" : v.toFixed(3) + " s");

  // ---- inputs -------------------------------------------------------------------------------
  el.image.addEventListener("change", () => {
    const f = el.image.files[0];
    if (el.preview.src) URL.revokeObjectURL(el.preview.src);
    el.preview.hidden = !f;
    if (f) el.preview.src = URL.createObjectURL(f);
  });
  el.audio.addEventListener("change", () => {
    if (el.audio.files[0]) { recorded = null; el.recording.hidden = true; el.recordState.textContent = ""; }
  });

  let recorder = null;
  el.record.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      showError("Recording needs a browser with MediaRecorder and a secure origin (https or localhost).");
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"].find((t) => MediaRecorder.isTypeSupported(t));
      recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
      const parts = [];
      recorder.ondataavailable = (e) => parts.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        recorded = new Blob(parts, { type: recorder.mimeType || "audio/webm" });
        recorder = null;
        el.audio.value = "";
        el.recording.src = URL.createObjectURL(recorded);
        el.recording.hidden = false;
        el.record.textContent = "Record again";
        el.record.setAttribute("aria-pressed", "false");
        el.recordState.textContent = "Recorded " + Math.round(recorded.size / 1024) + " KiB; it will be used.";
      };
      recorder.start();
      el.record.textContent = "Stop recording";
      el.record.setAttribute("aria-pressed", "true");
      el.recordState.textContent = "Recording…";
    } catch (e) {
      recorder = null;
      showError("Microphone: " + e.message);
    }
  });

  // A plain link cannot send the X-API-Key: with a key, fetch the file and save it from a blob.
  el.download.addEventListener("click", async (ev) => {
    if (!el.apiKey.value.trim() || el.download.href.startsWith("blob:")) return;
    ev.preventDefault();
    try {
      const resp = await fetch(el.download.href, { headers: headers() });
      if (!resp.ok) throw await apiError(resp, "Download");
      el.download.href = URL.createObjectURL(await resp.blob());
      el.download.click();
    } catch (e) {
      showError(e);
    }
  });

  el.unmute.addEventListener("click", () => {
    el.video.muted = !el.video.muted;
    el.unmute.textContent = el.video.muted ? "Unmute" : "Mute";
  });

  // ---- avatar -------------------------------------------------------------------------------
  async function uploadAvatar(file) {
    const form = new FormData();
    form.append("image_file", file, file.name);
    form.append("preprocess_mode", el.preprocess.value);
    el.avatarState.textContent = "Uploading portrait…";
    const up = await api("/api/avatar/upload", "Upload", { method: "POST", body: form });
    for (;;) {
      const st = await api("/api/avatar/status/" + up.image_id, "Avatar status");
      if (st.status === "ready") {
        const total = Object.values(st.timings || {}).reduce((a, b) => a + b, 0);
        el.avatarState.textContent = up.cached ? "Portrait ready (cached, nothing recomputed)." : "Portrait ready (precompute " + secs(total) + ").";
        return up.image_id;
      }
      if (st.status === "failed") {
        const e = st.error || {};
        throw new Error("Portrait failed: " + e.message + " (" + e.code + ")");
      }
      el.avatarState.textContent = "Precomputing the portrait…";
      await sleep(200);
    }
  }

  // ---- stream -------------------------------------------------------------------------------
  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  function startPlaying() {
    el.video.play().catch((e) => {
      if (e.name !== "AbortError") el.sessionState.textContent = "Press play to watch (" + e.message + ").";
    });
    el.unmute.hidden = false;
  }

  // Play the session's stream: MediaSource for the live fragmented MP4; a blob of the whole body
  // for a finished (non-fragmented) MP4 or a browser without MSE for this codec.
  async function playStream(url, t0) {
    const resp = await fetch(url, { headers: headers() });
    if (!resp.ok) throw await apiError(resp, "Stream");
    const reader = resp.body.getReader();
    let buf = new Uint8Array(0), info = null;
    while (!info) {
      const { done, value } = await reader.read();
      if (done) throw new Error("The stream ended before its init segment");
      if (demo.pageFirstBytesMs == null) { demo.pageFirstBytesMs = performance.now() - t0; $("t-page-bytes").textContent = ms(demo.pageFirstBytesMs); }
      buf = concat(buf, value);
      const { list, used } = Mp4.complete(buf);
      if (list.some((b) => b.type === "moov")) info = Mp4.describe(buf.subarray(0, used));
    }
    demo.codec = info.mime;
    $("t-codec").textContent = info.mime;
    const mse = info.fragmented && window.MediaSource && MediaSource.isTypeSupported(info.mime);
    if (!mse) {
      const parts = [buf];
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
      }
      el.video.src = URL.createObjectURL(new Blob(parts, { type: "video/mp4" }));
      startPlaying();
      return;
    }
    const source = new MediaSource();
    el.video.src = URL.createObjectURL(source);
    await new Promise((r) => source.addEventListener("sourceopen", r, { once: true }));
    const sb = source.addSourceBuffer(info.mime);
    const append = (bytes) => new Promise((resolve, reject) => {
      sb.addEventListener("updateend", resolve, { once: true });
      sb.addEventListener("error", () => reject(new Error("The browser could not decode the stream")), { once: true });
      sb.appendBuffer(bytes);
    });
    await append(buf);
    let started = false;
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new Error("The stream was cut before the end (see the session status): " + e.message);
      }
      if (chunk.done) break;
      await append(chunk.value);
      if (!started && sb.buffered.length) { started = true; startPlaying(); }
    }
    if (source.readyState === "open") source.endOfStream();
    if (!started) startPlaying();
  }

  function watchFirstFrame(t0) {
    const mark = () => {
      if (demo.pageFirstFrameMs != null) return;
      demo.pageFirstFrameMs = performance.now() - t0;
      $("t-page-first").textContent = ms(demo.pageFirstFrameMs);
    };
    if (el.video.requestVideoFrameCallback) el.video.requestVideoFrameCallback(mark);
    else el.video.addEventListener("playing", mark, { once: true });
  }

  // ---- session ------------------------------------------------------------------------------
  function showSession(st) {
    demo.status = st.status;
    el.progress.value = st.progress || 0;
    $("t-server-first").textContent = ms(st.first_frame_ms);
    $("t-frames").textContent = st.frames_total ? st.frames_done + " / " + st.frames_total : "–";
    const perf = st.performance || {};
    $("t-total").textContent = secs(perf.total_time);
    $("t-queue").textContent = secs(perf.queue_time);
    el.stages.replaceChildren(...Object.entries(perf.stages || {}).map(([k, v]) => row([k, v.toFixed(3)])));
    const hits = (perf.cache_hits || []).join(", ") || "none", misses = (perf.cache_misses || []).join(", ") || "none";
    el.sessionCache.textContent = "This session's cache hits: " + hits + "; computed: " + misses + ".";
    el.sessionState.textContent = "Session " + st.session_id.slice(0, 8) + "…: " + st.status +
      (st.cached ? " (from the video cache)" : "") + (st.status === "processing" ? " " + Math.round(100 * st.progress) + "%" : "");
    if (st.status === "ready" && st.download_url) {
      el.download.href = st.download_url;
      el.download.download = "vipavatar-" + st.session_id.slice(0, 8) + ".mp4";
      el.download.hidden = false;
    }
  }

  async function followSession(id) {
    for (;;) {
      const st = await api("/api/vip/status/" + id, "Session status");
      showSession(st);
      if (st.status === "ready") return st;
      if (st.status === "failed") {
        const e = st.error || {};
        throw new Error("Generation failed: " + e.message + " (" + e.code + ")");
      }
      await sleep(200);
    }
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }

  async function refreshStats() {
    try {
      const s = await api("/api/cache/stats", "Cache statistics");
      const perf = s.cache_statistics.performance, data = s.cache_statistics.cached_data, q = s.queue_status;
      el.cacheSummary.textContent = "Hit rate " + (100 * perf.cache_hit_rate).toFixed(1) + "%; queues: vip " + q.vip +
        ", standard " + q.standard + ", processing " + q.processing + ", failed " + q.failed + "; Redis " + s.memory.redis_used_human + ".";
      const kinds = [...new Set([...Object.keys(perf.hits), ...Object.keys(perf.misses), ...Object.keys(data)])].sort();
      el.cacheTable.replaceChildren(...kinds.map((k) => row([k, perf.hits[k] || 0, perf.misses[k] || 0, data[k] == null ? "–" : data[k]])));
    } catch (e) {
      el.cacheSummary.textContent = e.message;
    }
  }
  $("refresh-stats").addEventListener("click", refreshStats);

  el.form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    el.error.hidden = true;
    const image = el.image.files[0];
    const audio = recorded || el.audio.files[0];
    if (!image) return showError("Choose a portrait image first.");
    if (!audio) return showError("Choose an audio file or record one first.");
    el.generate.disabled = true;
    el.download.hidden = true;
    Object.assign(demo, { sessionId: null, status: null, pageFirstFrameMs: null, pageFirstBytesMs: null, codec: null });
    for (const id of ["t-page-first", "t-page-bytes", "t-server-first", "t-frames", "t-total", "t-queue", "t-codec"]) $(id).textContent = "–";
    try {
      const imageId = await uploadAvatar(image);
      const form = new FormData();
      form.append("image_id", imageId);
      form.append("audio_file", audio, audio.name || (audio.type.includes("ogg") ? "recording.ogg" : "recording.webm"));
      form.append("quality", el.quality.value);
      form.append("still_mode", el.still.checked ? "true" : "false");
      el.sessionState.textContent = "Starting…";
      const t0 = performance.now();
      const gen = await api("/api/vip/generate", "Generate", { method: "POST", body: form });
      demo.sessionId = gen.session_id;
      el.video.dataset.sessionId = gen.session_id;
      watchFirstFrame(t0);
      const playing = playStream(gen.stream_url, t0);
      const [, st] = await Promise.all([playing, followSession(gen.session_id)]);
      showSession(st);
    } catch (e) {
      showError(e);
    } finally {
      el.generate.disabled = false;
      refreshStats();
    }
  });

  refreshStats();
})();

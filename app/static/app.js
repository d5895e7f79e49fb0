"use strict";
// The page talks to the same JSON API as every other client; no framework, no CDN.
(function () {
  const $ = (id) => document.getElementById(id);
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem("imgsim-key") || "";
  keyInput.addEventListener("change", () => localStorage.setItem("imgsim-key", keyInput.value));

  function headers() {
    const key = keyInput.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  async function call(url, options) {
    const response = await fetch(url, { ...options, headers: headers() });
    if (!response.ok) {
      let detail = response.statusText;
      try { const body = await response.json(); detail = body.detail + " (" + body.code + ")"; } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    return response;
  }

  function preview(img, file) {
    img.src = URL.createObjectURL(file);
    img.hidden = false;
  }

  function setStatus(el, text, isError) {
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  // Thumbnails are fetched with the API key header (an <img src> cannot send one).
  async function thumbnail(img, url) {
    try {
      const response = await call(url + "?size=160");
      img.src = URL.createObjectURL(await response.blob());
    } catch (e) { img.alt = "image unavailable"; }
  }

  async function search(file) {
    const status = $("search-status");
    const list = $("results");
    preview($("query-preview"), file);
    list.innerHTML = "";
    setStatus(status, "Searching…");
    const form = new FormData();
    form.append("image", file);
    form.append("k", $("k").value);
    try {
      const body = await (await call("/v1/search", { method: "POST", body: form })).json();
      setStatus(status, body.results.length + " results in " + Math.round(body.took_ms) + " ms");
      for (const hit of body.results) {
        const li = document.createElement("li");
        li.className = "hit";
        const img = document.createElement("img");
        img.alt = hit.label;
        const label = document.createElement("span");
        label.className = "label";
        label.textContent = hit.label;
        const distance = document.createElement("span");
        distance.className = "distance";
        distance.textContent = "distance " + hit.distance.toFixed(3);
        li.append(img, label, distance);
        list.append(li);
        thumbnail(img, hit.image_url);
      }
    } catch (e) {
      setStatus(status, "Search failed: " + e.message, true);
    }
  }

  const drop = $("drop");
  $("search-file").addEventListener("change", (ev) => { if (ev.target.files[0]) search(ev.target.files[0]); });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) search(ev.dataTransfer.files[0]);
  });

  const pair = [$("compare-a"), $("compare-b")];
  const button = $("compare-btn");
  pair.forEach((input, i) => input.addEventListener("change", () => {
    if (input.files[0]) preview($(i === 0 ? "preview-a" : "preview-b"), input.files[0]);
    button.disabled = !(pair[0].files[0] && pair[1].files[0]);
  }));
  button.addEventListener("click", async () => {
    const verdict = $("verdict");
    const form = new FormData();
    form.append("images", pair[0].files[0]);
    form.append("images", pair[1].files[0]);
    setStatus(verdict, "Comparing…");
    try {
      const body = await (await call("/v1/compare", { method: "POST", body: form })).json();
      verdict.innerHTML = "";
      const word = document.createElement("span");
      word.className = body.same ? "same" : "different";
      word.textContent = body.same ? "Same kind of dog" : "Different dogs";
      const chance = body.same_probability === null ? "" :
        " · " + Math.round(100 * body.same_probability) + " % likely the same kind";
      verdict.append(word, document.createTextNode(chance +
        " · dissimilarity " + body.dissimilarity.toFixed(3) + " (threshold " + body.threshold.toFixed(3) +
        ") · similarity " + body.similarity.toFixed(3)));
    } catch (e) {
      setStatus(verdict, "Compare failed: " + e.message, true);
    }
  });
})();

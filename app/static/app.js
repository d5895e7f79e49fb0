"use strict";
// The page talks to the same JSON API as every other client; no framework, no CDN.
(function () {
  const $ = (id) => document.getElementById(id);
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem("imgsim-key") || "";
  keyInput.addEventListener("change", () => { localStorage.setItem("imgsim-key", keyInput.value); loadLabels(); });

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

  // Images are fetched with the API key header (an <img src> cannot send one).
  async function showImage(img, url) {
    try {
      const response = await call(url);
      img.src = URL.createObjectURL(await response.blob());
    } catch (e) { img.alt = "image unavailable"; }
  }

  // The label filter and the add form's suggestions: the gallery's labels, with their counts.
  async function loadLabels() {
    try {
      const page = await (await call("/v1/gallery?limit=1")).json();
      const select = $("label");
      const chosen = select.value;
      select.replaceChildren(new Option("any", ""));
      $("known-labels").replaceChildren();
      for (const [label, count] of Object.entries(page.labels)) {
        select.append(new Option(label + " (" + count + ")", label));
        $("known-labels").append(new Option(label));
      }
      select.value = chosen in page.labels ? chosen : "";
    } catch (e) { /* keys missing: the filter stays "any" until a key is typed */ }
  }

  function showHits(body, what) {
    const status = $("search-status");
    const list = $("results");
    list.replaceChildren();
    if (body.unknown_label) {
      setStatus(status, "No item is labelled " + body.unknown_label + "; labels: " + body.known_labels.join(", "), true);
      return;
    }
    setStatus(status, body.results.length + " " + what + " in " + Math.round(body.took_ms) + " ms");
    for (const hit of body.results) {
      const li = document.createElement("li");
      li.className = "hit";
      li.dataset.id = hit.id;
      const img = document.createElement("img");
      img.alt = hit.label;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = hit.label;
      const distance = document.createElement("span");
      distance.className = "distance";
      distance.textContent = "distance " + hit.distance.toFixed(3);
      li.append(img, label, distance);
      li.addEventListener("click", () => openViewer(hit));
      list.append(li);
      showImage(img, hit.image_url + "?size=160");
    }
  }

  function searchForm(file) {
    const form = new FormData();
    form.append("image", file);
    form.append("k", $("k").value);
    if ($("label").value) form.append("label", $("label").value);
    return form;
  }

  async function search(file) {
    preview($("query-preview"), file);
    $("viewer").hidden = true;
    setStatus($("search-status"), "Searching…");
    try {
      showHits(await (await call("/v1/search", { method: "POST", body: searchForm(file) })).json(), "results");
    } catch (e) {
      $("results").replaceChildren();
      setStatus($("search-status"), "Search failed: " + e.message, true);
    }
  }

  let viewed = null;
  function openViewer(hit) {
    viewed = hit;
    $("viewer").hidden = false;
    $("viewer-image").alt = hit.label;
    $("viewer-caption").textContent = hit.label + " · item " + hit.id + " · distance " + hit.distance.toFixed(3);
    showImage($("viewer-image"), hit.image_url);
  }

  async function moreLikeThis() {
    if (!viewed) return;
    const params = new URLSearchParams({ k: $("k").value });
    if ($("label").value) params.set("label", $("label").value);
    showImage($("query-preview"), viewed.image_url + "?size=320");
    $("query-preview").hidden = false;
    setStatus($("search-status"), "Searching…");
    try {
      const url = "/v1/gallery/" + viewed.id + "/similar?" + params;
      showHits(await (await call(url)).json(), "like item " + viewed.id);
    } catch (e) {
      setStatus($("search-status"), "Search failed: " + e.message, true);
    }
    $("viewer").hidden = true;
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
  $("more-like-this").addEventListener("click", moreLikeThis);
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });

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
      verdict.replaceChildren();
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

  const addFile = $("add-file");
  const addLabel = $("add-label");
  const addButton = $("add-btn");
  const canAdd = () => { addButton.disabled = !(addFile.files[0] && addLabel.value.trim()); };
  addFile.addEventListener("change", canAdd);
  addLabel.addEventListener("input", canAdd);
  addButton.addEventListener("click", async () => {
    const status = $("add-status");
    const form = new FormData();
    form.append("image", addFile.files[0]);
    form.append("label", addLabel.value.trim());
    setStatus(status, "Adding…");
    try {
      const item = await (await call("/v1/gallery", { method: "POST", body: form })).json();
      setStatus(status, (item.created ? "Added as item " : "Already in the gallery as item ") + item.id +
        " (" + item.label + ")");
      loadLabels();
    } catch (e) {
      setStatus(status, "Add failed: " + e.message, true);
    }
  });

  loadLabels();
})();

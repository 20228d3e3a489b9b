// The playground: streams a completion from this server's /v1/completions (stream + logprobs) into the page.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP_LOGPROBS = 5; // the API's maximum
const END_OF_TEXT = "<|endoftext|>";
let modelName = null;
let controller = null; // aborts the running request (Stop)
const alternatives = new WeakMap(); // token span -> {p, top: [[text, p], ...]}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorMessage(response) {
  if (response.status === 401) $("key-row").hidden = false;
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: requestHeaders() });
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return false;
  }
  const card = (await response.json()).data[0];
  modelName = card.id;
  $("model-line").textContent = `${card.id} · ${card.max_model_len}-token context`;
  setStatus("");
  return true;
}

function requestBody() {
  const body = {
    model: modelName,
    prompt: $("prompt").value,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    top_k: Number($("top-k").value),
    stream: true,
    logprobs: TOP_LOGPROBS,
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  return body;
}

// Red for unlikely tokens, through yellow, to green for likely ones (the legend's scale).
function shade(p) {
  const hue = 130 * p;
  return `hsl(${hue} ${85 - 30 * p}% ${78 + 2 * p}%)`;
}

function shown(token) {
  return token === END_OF_TEXT ? "⟨end of story⟩" : token.replace(/\n/g, "↵");
}

function addToken(token, logprob, top) {
  const span = document.createElement("span");
  const p = Math.exp(logprob);
  span.className = token === END_OF_TEXT ? "tok end" : "tok";
  span.textContent = shown(token);
  span.style.background = shade(p);
  span.dataset.p = String(p);
  const ranked = Object.entries(top).map(([text, value]) => [text, Math.exp(value)]).sort((a, b) => b[1] - a[1]);
  alternatives.set(span, { token, p, top: ranked });
  $("tokens").append(span);
  if (token.includes("\n")) $("tokens").append(document.createElement("br"));
}

function percent(p) {
  return p >= 0.001 ? `${(100 * p).toFixed(1)}%` : "<0.1%";
}

function showAlternatives(span) {
  const info = alternatives.get(span);
  if (!info) return;
  const tooltip = $("tooltip");
  const table = document.createElement("table");
  for (const [text, p] of info.top) {
    const row = table.insertRow();
    if (text === info.token) row.className = "chosen";
    row.insertCell().textContent = JSON.stringify(text);
    const cell = row.insertCell();
    cell.className = "p";
    cell.textContent = percent(p);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, 100 * p)}%`;
    const barCell = row.insertCell();
    barCell.className = "bar-cell";
    barCell.append(bar);
  }
  tooltip.replaceChildren(table);
  tooltip.hidden = false;
  const box = span.getBoundingClientRect();
  tooltip.style.left = `${Math.min(window.scrollX + box.left, window.scrollX + window.innerWidth - tooltip.offsetWidth - 8)}px`;
  tooltip.style.top = `${window.scrollY + box.bottom + 6}px`;
  document.querySelectorAll(".tok.selected").forEach((other) => other.classList.remove("selected"));
  span.classList.add("selected");
}

function hideAlternatives() {
  $("tooltip").hidden = true;
  document.querySelectorAll(".tok.selected").forEach((span) => span.classList.remove("selected"));
}

// Server-sent events arrive in arbitrary pieces; each event ends with a blank line.
async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("data: ") && event !== "data: [DONE]") yield JSON.parse(event.slice(6));
    }
  }
}

function running(isRunning) {
  $("generate").disabled = isRunning;
  $("stop").disabled = !isRunning;
}

async function generate() {
  if (!modelName && !(await loadModel())) return;
  $("story-prompt").textContent = $("prompt").value;
  $("story-output").textContent = "";
  $("tokens").replaceChildren();
  hideAlternatives();
  controller = new AbortController();
  running(true);
  setStatus("generating…");
  const started = performance.now();
  let tokens = 0;
  let finish = null;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: requestHeaders(), body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!response.ok) {
      setStatus(await errorMessage(response), true);
      return;
    }
    for await (const chunk of serverSentEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        $("story-output").append(choice.text);
        const logprobs = choice.logprobs;
        if (logprobs) {
          logprobs.tokens.forEach((token, i) => addToken(token, logprobs.token_logprobs[i], logprobs.top_logprobs[i]));
          tokens += logprobs.tokens.length;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      setStatus(`generating… ${tokens} tokens`);
    }
    const seconds = (performance.now() - started) / 1000;
    const why = { stop: "the story ended", length: "reached max tokens", cancelled: "the server stopped it" }[finish];
    setStatus(`${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(0)} tokens/s) · ${why || finish}`);
  } catch (error) {
    if (error.name === "AbortError") setStatus(`stopped after ${tokens} tokens`);
    else setStatus(error.message || String(error), true);
  } finally {
    controller = null;
    running(false);
  }
}

function init() {
  for (const [input, output] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    $(input).addEventListener("input", () => { $(output).textContent = $(input).value; });
  }
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !controller) generate();
  });
  $("api-key").addEventListener("change", loadModel);
  const tokenView = $("tokens");
  tokenView.addEventListener("mouseover", (event) => {
    if (event.target.classList.contains("tok")) showAlternatives(event.target);
  });
  tokenView.addEventListener("mouseleave", hideAlternatives);
  tokenView.addEventListener("click", (event) => { // a tap on touch screens
    if (event.target.classList.contains("tok")) showAlternatives(event.target);
  });
  document.addEventListener("click", (event) => {
    if (!tokenView.contains(event.target)) hideAlternatives();
  });
  loadModel();
}

init();

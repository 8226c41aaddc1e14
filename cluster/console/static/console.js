// The console's few scripts: copy buttons, the playground's streamed chat, the usage charts.
function copyText(id, button) {
  const text = document.getElementById(id).innerText;
  const done = () => { const old = button.textContent; button.textContent = "Copied"; setTimeout(() => (button.textContent = old), 1500); };
  if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).then(done); return; }
  const area = document.createElement("textarea"); area.value = text; document.body.appendChild(area); area.select();
  document.execCommand("copy"); area.remove(); done();
}

function playground(url) {
  const $ = (id) => document.getElementById(id);
  const history = [];
  const csrf = document.body.dataset.csrf;
  for (const name of ["temperature", "top_p"]) {
    const input = $("pg-" + name);
    input.addEventListener("input", () => ($("pg-" + name + "-out").textContent = input.value));
  }
  const thinkingAllowed = () => { const o = $("pg-model").selectedOptions[0]; $("pg-thinking").disabled = !o || o.dataset.thinking !== "1"; };
  $("pg-model").addEventListener("change", thinkingAllowed); thinkingAllowed();
  $("pg-restore").addEventListener("click", () => {
    for (const name of ["temperature", "top_p", "top_k"]) { const input = $("pg-" + name); input.value = input.dataset.default; input.dispatchEvent(new Event("input")); }
    $("pg-thinking").checked = false;
  });
  $("pg-clear").addEventListener("click", () => { history.length = 0; $("pg-log").innerHTML = ""; });
  const bubble = (role) => {
    const div = document.createElement("div"); div.className = "msg " + role;
    const reasoning = document.createElement("div"); reasoning.className = "reasoning";
    const content = document.createElement("div"); content.className = "content";
    div.append(reasoning, content); $("pg-log").appendChild(div); return { div, reasoning, content };
  };
  $("pg-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("pg-input").value.trim(); if (!text) return;
    $("pg-error").hidden = true; $("pg-input").value = "";
    history.push({ role: "user", content: text }); bubble("user").content.textContent = text;
    const answer = bubble("assistant"); answer.div.dataset.state = "streaming";
    $("pg-send").disabled = true;
    const body = { model: $("pg-model").value, messages: history, temperature: parseFloat($("pg-temperature").value),
                   top_p: parseFloat($("pg-top_p").value), top_k: parseInt($("pg-top_k").value, 10),
                   thinking: $("pg-thinking").checked && !$("pg-thinking").disabled };
    let content = "";
    try {
      const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body) });
      if (!response.ok) {
        let message = response.statusText;
        try { message = (await response.json()).error_msg || message; } catch (e) {}
        throw new Error(message);
      }
      const reader = response.body.getReader(); const decoder = new TextDecoder(); let buffer = "";
      while (true) {
        const { value, done } = await reader.read(); if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim(); if (data === "[DONE]") continue;
            let chunk;
            try { chunk = JSON.parse(data); } catch (e) { console.warn("playground: not JSON", data); continue; }
            answer.div.dataset.events = String(Number(answer.div.dataset.events || 0) + 1);
            if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
            if (chunk.object === "error") throw new Error(chunk.message || "The model failed.");
            for (const choice of chunk.choices || []) {
              const delta = choice.delta || {};
              if (delta.reasoning_content) answer.reasoning.textContent += delta.reasoning_content;
              if (delta.reasoning) answer.reasoning.textContent += delta.reasoning;
              if (delta.content) { content += delta.content; answer.content.textContent = content; }
              if (choice.finish_reason === "content_filter") answer.content.textContent += "\n[stopped by content moderation]";
            }
            $("pg-log").scrollTop = $("pg-log").scrollHeight;
          }
        }
      }
      history.push({ role: "assistant", content });
      answer.div.dataset.state = "done";
    } catch (error) {
      console.error("playground:", error);
      answer.div.dataset.state = "error"; answer.div.remove(); history.pop();
      $("pg-error").textContent = error.message; $("pg-error").hidden = false;
    } finally { $("pg-send").disabled = false; }
  });
}

function usageCharts() {
  const data = JSON.parse(document.getElementById("usage-data").textContent);
  const line = (id, datasets) => new Chart(document.getElementById(id), {
    type: "line", data: { labels: data.labels, datasets },
    options: { animation: false, responsive: true, spanGaps: true, elements: { point: { radius: 0 } },
               interaction: { mode: "index", intersect: false }, scales: { y: { beginAtZero: true } } } });
  window.maasCharts = [
    line("chart-calls", [{ label: "calls", data: data.calls, borderColor: "#2f6fec" }, { label: "failed", data: data.failed, borderColor: "#c8372d" }]),
    line("chart-tokens", [{ label: "tokens", data: data.tokens, borderColor: "#1f8a4c" }]),
    line("chart-latency", [{ label: "TTFT p50", data: data.ttft_p50, borderColor: "#e0a526" }, { label: "TTFT p99", data: data.ttft_p99, borderColor: "#c8372d" },
                           { label: "TPOT p50", data: data.tpot_p50, borderColor: "#2f6fec" }]),
  ];
}

function lossChart() {
  const data = JSON.parse(document.getElementById("loss-data").textContent);
  window.maasLoss = new Chart(document.getElementById("chart-loss"), {
    type: "line", data: { labels: data.steps, datasets: [{ label: "loss", data: data.loss, borderColor: "#2f6fec" }] },
    options: { animation: false, elements: { point: { radius: 0 } }, scales: { x: { title: { display: true, text: "step" } } } } });
}

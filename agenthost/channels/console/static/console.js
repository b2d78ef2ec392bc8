// agenthost console: the page's only script. Plain JavaScript, no build step, no
// dependencies; written for this project and shipped under its licence (LICENSE).
// It streams chat answers and shows the live feed. Text from the server is only ever
// inserted with textContent, never as HTML.
"use strict";

function turn(transcript, who, text) {
  const box = document.createElement("div");
  box.className = "turn " + who;
  const label = document.createElement("span");
  label.textContent = who === "user" ? "You" : "Agent";
  const body = document.createElement("p");
  body.textContent = text;
  box.append(label, body);
  transcript.append(box);
  return body;
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

function setUpChat(form) {
  const transcript = document.getElementById("transcript");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new URLSearchParams(new FormData(form));
    const text = fields.get("message") || "";
    const button = form.querySelector("button");
    turn(transcript, "user", text);
    const answer = turn(transcript, "agent", "");
    const box = answer.parentElement;
    box.classList.add("streaming");
    form.reset();
    button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: fields,
        headers: { accept: "text/event-stream" },
        credentials: "same-origin",
      });
      if (!response.ok) {
        answer.textContent = "The console refused this message (" + response.status + ").";
        return;
      }
      await readEvents(response, (name, data) => {
        if (name === "delta") {
          answer.textContent += data.text;
          box.dataset.deltas = String(Number(box.dataset.deltas || 0) + 1);
        }
        else if (name === "done") answer.textContent = data.text;
        else if (name === "error") answer.textContent = data.message;
      });
    } catch (error) {
      answer.textContent = "The connection to the host broke.";
    } finally {
      box.classList.remove("streaming");
      box.classList.add("done");
      button.disabled = false;
    }
  });
}

function setUpLive(list) {
  const status = document.getElementById("live-status");
  const source = new EventSource(list.dataset.source);
  source.addEventListener("open", () => { status.textContent = "connected"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
  source.addEventListener("host", (event) => {
    const data = JSON.parse(event.data);
    const item = document.createElement("li");
    item.className = "live-event kind-" + data.kind;
    const ids = Object.entries(data.ids).map(([k, v]) => k + "=" + v).join(" ");
    item.textContent = [data.time, data.kind, data.channel || "", data.outcome, ids]
      .filter(Boolean).join(" · ");
    list.prepend(item);
    while (list.children.length > 200) list.lastElementChild.remove();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const chat = document.getElementById("chat");
  if (chat) setUpChat(chat);
  const live = document.getElementById("live");
  if (live) setUpLive(live);
});

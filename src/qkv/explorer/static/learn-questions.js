/* qkv learn: one question (choice, number or token), graded by the server.

   Choices and tokens are radio groups (arrows move, Enter checks); a number is a number
   input (Enter checks). Feedback lands in an aria-live region and says right or wrong in
   words and with an icon, never by colour alone. A wrong answer offers "Try again", which
   reshuffles the options (answers name option ids, so the order is free). */

import { el, markup, markupEl } from "./learn-markup.js";
import { api } from "./learn-api.js";

let groupCount = 0;

function shuffle(xs) {
  const a = xs.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/* `ctx`: {lesson, widget (a LiveWidget whose args are sent, or null), answered (bool: right before),
   onAnswer(question, response)}. */
export class Question {
  constructor(q, ctx) {
    this.q = q;
    this.ctx = ctx;
    this.widget = ctx.widget || null;
    this.tokens = [];
    this.done = false;
    const n = ++groupCount;
    this.root = el("div", "question q-" + q.phase + " q-" + q.kind);
    this.root.dataset.testid = "question-" + q.id;
    this.root.dataset.state = "open";
    this.root.setAttribute("role", "group");
    const prompt = markupEl("div", "prompt", q.prompt);
    prompt.id = "q" + n + "-prompt";
    this.root.setAttribute("aria-labelledby", prompt.id);
    const badge = el("span", "q-badge", q.phase === "predict" ? "Predict" : "Check");
    this.root.append(badge, prompt);
    this.answerBox = el("div", "answer");
    this.root.append(this.answerBox);
    const actions = el("div", "q-actions");
    this.check = el("button", "primary", q.phase === "predict" ? "Commit" : "Check");
    this.check.type = "button";
    this.check.dataset.testid = "check-" + q.id;
    this.check.addEventListener("click", () => this.submit());
    this.retry = el("button", "secondary", "Try again");
    this.retry.type = "button";
    this.retry.hidden = true;
    this.retry.dataset.testid = "retry-" + q.id;
    this.retry.addEventListener("click", () => this.tryAgain());
    actions.append(this.check, this.retry);
    this.root.append(actions);
    this.feedback = el("div", "feedback");
    this.feedback.dataset.testid = "feedback-" + q.id;
    this.feedback.setAttribute("aria-live", "polite");
    this.feedback.id = "q" + n + "-feedback";
    this.root.append(this.feedback);
    this.groupName = "q" + n;
    if (q.kind === "choice") this.drawChoices(shuffle(q.options || []));
    else if (q.kind === "number") this.drawNumber();
    else this.drawTokens();
    if (ctx.answered) {
      this.root.dataset.before = "correct";
      this.feedback.append(el("p", "before", "✓ You answered this correctly before; you may answer again."));
    }
  }

  drawChoices(options) {
    const group = el("div", "options");
    group.setAttribute("role", "radiogroup");
    group.setAttribute("aria-labelledby", this.root.getAttribute("aria-labelledby"));
    for (const o of options) {
      const label = el("label", "option");
      const input = el("input");
      input.type = "radio";
      input.name = this.groupName;
      input.value = o.id;
      input.dataset.testid = `option-${this.q.id}-${o.id}`;
      input.addEventListener("keydown", e => { if (e.key === "Enter") { e.preventDefault(); this.submit(); } });
      label.append(input, markupEl("span", "option-text", o.text, true));
      label.dataset.option = o.id;
      group.append(label);
    }
    this.answerBox.replaceChildren(group);
  }

  drawNumber() {
    const label = el("label", "number-answer");
    const input = el("input");
    input.type = "number";
    input.step = "any";
    input.inputMode = "decimal";
    input.dataset.testid = "number-" + this.q.id;
    input.addEventListener("keydown", e => { if (e.key === "Enter") { e.preventDefault(); this.submit(); } });
    label.append(el("span", null, "Your answer"), input);
    this.number = input;
    this.answerBox.replaceChildren(label);
  }

  drawTokens() {
    const box = el("div", "token-answer");
    box.append(el("p", "help", "Pick a token (arrows move, Enter checks)."));
    const group = el("div", "token-pick");
    group.setAttribute("role", "radiogroup");
    group.setAttribute("aria-labelledby", this.root.getAttribute("aria-labelledby"));
    const waiting = this.widget ? "computing the tokens…" : "this question names no widget to take tokens from";
    group.append(el("span", "muted", waiting));
    box.append(group);
    this.answerBox.replaceChildren(box);
    this.tokenGroup = group;
    if (this.widget) this.widget.onResult(result => this.setTokens((result.facts && result.facts.tokens) || []));
  }

  setTokens(tokens) {
    if (JSON.stringify(tokens) === JSON.stringify(this.tokens) && this.tokenGroup.querySelector("input")) return;
    this.tokens = tokens;
    const items = tokens.map((t, i) => {
      const label = el("label", "pick");
      const input = el("input");
      input.type = "radio";
      input.name = this.groupName;
      input.value = String(i);
      input.dataset.testid = `token-${this.q.id}-${i}`;
      input.setAttribute("aria-label", `${t} (token ${i})`);
      input.addEventListener("keydown", e => { if (e.key === "Enter") { e.preventDefault(); this.submit(); } });
      label.append(input, el("span", "pick-text", t));
      return label;
    });
    this.tokenGroup.replaceChildren(...(items.length ? items : [el("span", "muted", "no tokens")]));
  }

  value() {
    if (this.q.kind === "number") {
      const v = this.number.value.trim();
      return v === "" || !Number.isFinite(+v) ? undefined : +v;
    }
    const checked = this.answerBox.querySelector("input[type=radio]:checked");
    if (!checked) return undefined;
    return this.q.kind === "token" ? +checked.value : checked.value;
  }

  say(kind, text, extra) {
    const p = el("p", "verdict " + kind);
    const icon = el("span", "icon", kind === "right" ? "✓" : kind === "wrong" ? "✗" : "ℹ");
    icon.setAttribute("aria-hidden", "true");
    p.append(icon, el("b", null, text));
    this.feedback.replaceChildren(p);
    if (extra) for (const node of extra) this.feedback.append(node);
  }

  async submit() {
    if (this.busy) return;
    const answer = this.value();
    if (answer === undefined) {
      this.say("info", this.q.kind === "number" ? "Type a number first." : "Pick an answer first.");
      return;
    }
    const body = { lesson: this.ctx.lesson, question: this.q.id, answer };
    if (this.q.widget && this.widget) body.args = this.widget.args;
    this.busy = true;
    this.check.disabled = true;
    this.root.setAttribute("aria-busy", "true");
    let r;
    try {
      r = await api("/api/learn/answer", body);
    } catch (e) {
      this.say("info", "Could not check the answer: " + e.message);
      this.check.disabled = false;
      return;
    } finally {
      this.busy = false;
      this.root.removeAttribute("aria-busy");
    }
    this.show(r, answer);
    this.ctx.onAnswer(this, r);
  }

  show(r, answer) {
    const extra = [];
    if (r.feedback) extra.push(markupEl("div", "feedback-text", r.feedback));
    const predict = this.q.phase === "predict";
    if (!r.correct && predict) extra.push(el("p", "key", "The answer: " + this.describeKey(r.key)));
    if (r.reveal && (r.correct || predict)) extra.push(markupEl("div", "reveal", r.reveal));
    this.say(r.correct ? "right" : "wrong", r.correct ? "Right." : predict ? "Not quite." : "Not yet.", extra);
    this.root.dataset.state = r.correct ? "correct" : "wrong";
    this.root.dataset.answered = JSON.stringify(answer);
    this.markOptions(answer, r);
    if (predict || r.correct) {
      this.done = true;
      for (const input of this.answerBox.querySelectorAll("input")) input.disabled = true;
      this.check.hidden = true;
      this.retry.hidden = true;
    } else {
      this.check.hidden = true;
      this.retry.hidden = false;
      this.retry.disabled = false;
      for (const input of this.answerBox.querySelectorAll("input")) input.disabled = true;
      this.retry.focus();
    }
  }

  describeKey(key) {
    if (this.q.kind === "choice") {
      const o = (this.q.options || []).find(x => x.id === key);
      return o ? o.text.replace(/[*`]/g, "") : String(key);
    }
    if (this.q.kind === "token") return `“${this.tokens[key] ?? "?"}” (token ${key})`;
    return String(key);
  }

  markOptions(answer, r) {
    for (const label of this.answerBox.querySelectorAll("label")) {
      const input = label.querySelector("input");
      if (!input) continue;
      const v = this.q.kind === "token" ? +input.value : input.value;
      label.classList.remove("chosen-right", "chosen-wrong", "is-key");
      if (v === answer) label.classList.add(r.correct ? "chosen-right" : "chosen-wrong");
      if (this.q.phase === "predict" && v === r.key) label.classList.add("is-key");
    }
  }

  tryAgain() {
    this.root.dataset.state = "open";
    this.feedback.replaceChildren();
    this.retry.hidden = true;
    this.check.hidden = false;
    this.check.disabled = false;
    if (this.q.kind === "choice") this.drawChoices(shuffle(this.q.options || []));
    else if (this.q.kind === "token") { const t = this.tokens; this.tokens = []; this.setTokens(t); }
    else { this.number.disabled = false; this.number.value = ""; }
    const first = this.answerBox.querySelector("input");
    if (first) first.focus();
  }
}

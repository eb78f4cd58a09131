/* qkv learn: "Write it yourself". An exercise's statement, its hint ladder, a code area
   holding the learner's solution (kept in this browser's storage as they type, so a reload
   or a crash loses nothing), Run checks, and the grader's report: each group of cases, the
   first failing one, the diagnosed mistake with the lesson that explains it.
   The server grades the code only in the grader's child process (time and memory limits). */

import { api } from "./learn-api.js";
import { el, markupEl } from "./learn-markup.js";

const DRAFT = "qkv-learn-draft:";  // + exercise name -> the learner's text
const INDENT = "    ";

function draftOf(ex) {
  try { return localStorage.getItem(DRAFT + ex.name); } catch (e) { return null; }
}

function saveDraft(ex, text) {
  try { localStorage.setItem(DRAFT + ex.name, text); } catch (e) { /* storage full or off: the text stays on screen */ }
}

/* A plain code area: Tab indents (Shift+Tab unindents) the selected lines; Escape then Tab leaves it. */
function codeArea(text, onChange) {
  const area = el("textarea", "editor");
  area.value = text;
  area.spellcheck = false;
  area.setAttribute("autocapitalize", "off");
  area.setAttribute("autocomplete", "off");
  area.setAttribute("aria-label", "Your solution (Python)");
  area.rows = Math.min(32, Math.max(14, text.split("\n").length + 2));
  area.dataset.testid = "exercise-editor";
  let escaped = false;
  area.addEventListener("keydown", e => {
    if (e.key === "Escape") { escaped = true; return; }
    if (e.key !== "Tab" || escaped || e.ctrlKey || e.altKey || e.metaKey) { escaped = false; return; }
    e.preventDefault();
    const { selectionStart: a, selectionEnd: b, value } = area;
    const first = value.lastIndexOf("\n", a - 1) + 1;
    if (a === b && !e.shiftKey) {
      area.setRangeText(INDENT, a, b, "end");
    } else {
      const lines = value.slice(first, b).split("\n");
      const moved = lines.map(l => e.shiftKey ? l.replace(/^ {1,4}/, "") : INDENT + l).join("\n");
      area.setRangeText(moved, first, b, "select");
    }
    onChange(area.value);
  });
  area.addEventListener("input", () => onChange(area.value));
  return area;
}

function hintLadder(ex) {
  const box = el("div", "hints");
  const list = el("ol", "hint-list");
  const more = el("button", "secondary small");
  more.type = "button";
  more.dataset.testid = "exercise-hint";
  const label = () => {
    const shown = list.childElementCount;
    more.textContent = shown ? `Next hint (${shown + 1} of ${ex.hints.length})` : `Show a hint (1 of ${ex.hints.length})`;
    more.hidden = shown >= ex.hints.length;
  };
  more.addEventListener("click", () => {
    list.append(markupEl("li", null, ex.hints[list.childElementCount], true));
    label();
  });
  label();
  box.append(list, more);
  return box;
}

function caseRow(c) {
  const li = el("li", "case " + (c.passed ? "ok" : "failed"));
  li.dataset.testid = "case-" + c.group.replace(/[^a-z0-9]+/gi, "-");
  const mark = el("span", "mark", c.passed ? "✓" : "✗");
  mark.setAttribute("aria-hidden", "true");
  const what = el("span", "case-group", c.group + (c.passed ? " — passed" : " — failed"));
  li.append(mark, what);
  if (c.kind === "values") {
    li.append(el("span", "case-count", ` (${c.total - c.failed}/${c.total} cases)`));
    const f = c.first_failure;
    if (f) {
      li.append(el("div", "case-detail", "first failing case: " + f.case));
      li.append(el("div", "case-detail", f.message));
    }
  } else {
    li.append(el("div", "case-detail", c.detail || c.claim));
  }
  return li;
}

function where(error) {
  if (!error) return "";
  let at = error.type;
  if (error.file) at += ` at ${error.file}:${error.line}` + (error.function ? ` in ${error.function}` : "");
  if (error.code) at += ` (${error.code})`;
  return `${at}: ${error.message}`;
}

function diagnosisBox(d, lessonTitle) {
  const box = el("div", "diagnosis");
  box.dataset.testid = "exercise-diagnosis";
  box.dataset.mistake = d.mistake;
  box.setAttribute("role", "status");
  const h = el("h4", null, "Diagnosis: " + d.title);
  box.append(h, markupEl("div", "prose", d.explanation));
  box.append(el("p", "muted", `${d.caveat}; the smallest case: ${d.case}`));
  if (d.also && d.also.length) box.append(el("p", "muted", "Also consistent with: " + d.also.join(", ")));
  const read = el("p", "read");
  const a = el("a", null, "Read: " + lessonTitle(d.lesson));
  a.href = "#/lesson/" + encodeURIComponent(d.lesson);
  read.append(a);
  box.append(read);
  return box;
}

/* The grader's report as the page shows it (`qkv learn check`'s, item for item). */
export function reportView(r, lessonTitle) {
  const box = el("div", "report " + (r.passed ? "passed" : "failed"));
  box.dataset.testid = "exercise-report";
  box.dataset.passed = String(r.passed);
  const head = el("p", "verdict", r.passed
    ? "✓ Passed every check."
    : "Not yet: some checks fail.");
  head.append(el("span", "muted", ` (${r.library || "no"} arrays, ${(+r.seconds).toFixed(2)} s)`));
  box.append(head);
  if (r.diagnosis) box.append(diagnosisBox(r.diagnosis, lessonTitle));  // the news first, the evidence below
  if (r.cases && r.cases.length) {
    const ul = el("ul", "cases");
    for (const c of r.cases) ul.append(caseRow(c));
    box.append(ul);
  }
  if (r.error) {
    const e = el("pre", "output failed", "your code raised " + where(r.error));
    e.dataset.testid = "exercise-error";
    box.append(e);
  }
  if (!r.diagnosis && !r.passed && r.note && !(r.error && r.note.includes(r.error.message))) box.append(el("p", "note", r.note));
  if (r.printed) box.append(el("pre", "output", "your code printed:\n" + r.printed.slice(0, 2000)));
  if (r.passed) {
    const p = el("p", "practised", "The concept is marked practised in the graph.");
    p.dataset.testid = "exercise-practised";
    box.append(p);
  } else if (r.diagnosis) {
    box.append(el("p", "muted", "This concept comes back for review tomorrow."));
  }
  return box;
}

/* The exercise page. `after(report)` runs once a report is in (the page refreshes the graph). */
export function exerciseView(ex, { lessonTitle, after }) {
  const art = el("article", "exercise card");
  art.dataset.exercise = ex.name;
  const head = el("header", "lesson-head");
  const crumb = el("p", "crumb", "Write it yourself · ");
  const back = el("a", null, "taught in: " + lessonTitle(ex.lesson));
  back.href = "#/lesson/" + encodeURIComponent(ex.lesson);
  crumb.append(back);
  if (ex.record && ex.record.passed) crumb.append(el("span", "badge mastered", " ✓ passed"));
  const h = el("h2", "lesson-h", ex.title);
  h.id = "lesson-title";
  h.tabIndex = -1;
  head.append(crumb, h);
  const sig = el("pre", "code-block signature");
  sig.append(el("code", null, ex.signature));
  const body = el("section", "exercise-body");
  body.append(markupEl("div", "prose", ex.statement), sig, hintLadder(ex));

  let text = draftOf(ex) ?? ex.starter;
  const area = codeArea(text, value => { text = value; saveDraft(ex, value); });
  const run = el("button", "primary", "Run checks");
  run.type = "button";
  run.dataset.testid = "exercise-run";
  const restart = el("button", "secondary small", "Start over from the starter file");
  restart.type = "button";
  restart.addEventListener("click", () => {
    if (text !== ex.starter && !confirm("Replace your code with the starter file?")) return;
    area.value = text = ex.starter;
    saveDraft(ex, text);
  });
  const out = el("div", "report-host");
  out.setAttribute("aria-live", "polite");
  run.addEventListener("click", async () => {
    run.disabled = true;
    out.replaceChildren(el("p", "muted running", "checking in a separate process (at most 10 s)…"));
    try {
      const r = await api("/api/learn/check", { exercise: ex.name, source: text });
      out.replaceChildren(reportView(r, lessonTitle));
      after(r);
    } catch (e) {
      const box = el("div", "alert", "Could not check: " + e.message);
      box.setAttribute("role", "alert");
      out.replaceChildren(box);
    } finally {
      run.disabled = false;
    }
  });
  const actions = el("div", "editor-actions");
  actions.append(run, restart);
  body.append(el("label", "editor-label", `Your ${ex.file}`), area, actions, out);
  art.append(head, body);
  return art;
}

/* The side list: every exercise, ✓ once passed. */
export function exerciseList(exercises, current) {
  const ol = el("ol", "exercise-list");
  ol.dataset.testid = "exercise-list";
  for (const ex of exercises) {
    const li = el("li", "exercise-item" + (ex.name === current ? " current" : ""));
    const a = el("a", null, ex.title);
    a.href = "#/exercise/" + encodeURIComponent(ex.name);
    a.dataset.testid = "exercise-" + ex.name;
    if (ex.record && ex.record.passed) {
      a.dataset.passed = "true";
      li.append(a, el("span", "badge mastered", " ✓"));
    } else {
      li.append(a);
    }
    ol.append(li);
  }
  return ol;
}

/* qkv learn: the course page. The architecture graph, the lesson list, the glossary and the
   FAQ on the side; a lesson in three routes (overview, build-up one step at a time, code
   first), each ending with the summary, myths, pitfalls and the knowledge check.
   Everything the learner sees is computed by this page's own server (/api/learn/...). */

import { api } from "./learn-api.js";
import { el, markup, markupEl, setGlossary } from "./learn-markup.js";
import { LiveWidget } from "./learn-views.js";
import { Question } from "./learn-questions.js";
import { drawGraph, graphText } from "./learn-graph.js";
import { exerciseList, exerciseView } from "./learn-exercises.js";

const $ = id => document.getElementById(id);
const ROUTES = [["overview", "Overview"], ["build-up", "Build-up"], ["code-first", "Code first"]];

const state = {
  course: null,
  lesson: null,      // the lesson on screen (the server's JSON)
  route: "build-up",
  step: 0,
  answers: {},       // question id -> {correct}
  unlocked: [],      // concept ids newly open (highlighted in the graph)
  widgets: [],       // LiveWidgets on screen
  exercises: [],     // the exercises with the learner's record of each (/api/learn/exercises)
  exercise: null,    // the exercise on screen
};

/* ───────────────────── errors and status ───────────────────── */

function showError(message) {
  const box = $("page-error");
  box.replaceChildren(el("span", null, message));
  const close = el("button", "secondary small", "Dismiss");
  close.type = "button";
  close.addEventListener("click", () => { box.hidden = true; });
  box.append(close);
  box.hidden = false;
}

function setServer(ok, text) {
  const s = $("server-status");
  s.textContent = text;
  s.classList.toggle("ok", ok);
  s.classList.toggle("bad", !ok);
}

/* ───────────────────── tabs (ARIA tablist, arrows move) ───────────────────── */

function tablist(list, onSelect) {
  const tabs = () => [...list.querySelectorAll("[role=tab]")];
  list.addEventListener("keydown", e => {
    const all = tabs(), i = all.indexOf(document.activeElement);
    if (i < 0) return;
    let j = null;
    if (e.key === "ArrowRight" || e.key === "ArrowDown") j = (i + 1) % all.length;
    else if (e.key === "ArrowLeft" || e.key === "ArrowUp") j = (i - 1 + all.length) % all.length;
    else if (e.key === "Home") j = 0;
    else if (e.key === "End") j = all.length - 1;
    if (j === null) return;
    e.preventDefault();
    all[j].focus();
    onSelect(all[j].dataset.tab);
  });
  list.addEventListener("click", e => {
    const tab = e.target.closest("[role=tab]");
    if (tab) onSelect(tab.dataset.tab);
  });
}

function selectTab(list, name) {
  for (const tab of list.querySelectorAll("[role=tab]")) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    const panel = tab.getAttribute("aria-controls") && $(tab.getAttribute("aria-controls"));
    if (panel) panel.hidden = !on;
  }
}

/* ───────────────────── the side: graph, lessons, glossary, FAQ ───────────────────── */

function lessonById(id) { return state.course && state.course.lessons.find(l => l.id === id); }

function stateLabel(s, due) {
  const text = { locked: "locked", open: "open", mastered: "mastered" }[s] || s;
  return text + (due ? " · due for review" : "");
}

function stateBadge(s, due) {
  const b = el("span", "state-badge state-" + s);
  const icon = el("span", "icon", s === "mastered" ? "✓" : s === "locked" ? "⊘" : "○");
  icon.setAttribute("aria-hidden", "true");
  b.append(icon, document.createTextNode(" " + stateLabel(s, due)));
  return b;
}

function renderSide() {
  const c = state.course;
  const current = state.lesson && state.lesson.id;
  drawGraph($("graph"), c.graph, c.lessons, { open: id => go(id), unlocked: state.unlocked, current });
  $("graph-text").replaceChildren(graphText(c.graph));
  const list = $("lesson-list");
  list.replaceChildren(...[...c.lessons].sort((a, b) => a.order - b.order).map(l => {
    const li = el("li", "lesson-item state-" + l.state);
    if (l.id === current) li.classList.add("current");
    const entry = el(l.state === "locked" ? "span" : "a", "lesson-entry");
    entry.dataset.testid = "lesson-" + l.id;
    entry.dataset.state = l.state;
    if (l.state !== "locked") entry.href = "#/lesson/" + encodeURIComponent(l.id);
    else entry.setAttribute("aria-disabled", "true");
    if (l.id === current) entry.setAttribute("aria-current", "page");
    entry.append(el("span", "lesson-order", l.order + "."), el("span", "lesson-title", l.title));
    const meta = el("span", "lesson-meta");
    meta.append(stateBadge(l.state, l.due), document.createTextNode(` · ${l.minutes} min`));
    entry.append(meta);
    if (l.state === "locked" && l.prerequisites.length) {
      const titles = l.prerequisites.map(p => conceptTitle(p));
      entry.append(el("span", "lesson-needs", "needs " + titles.join(", ")));
    }
    li.append(entry);
    return li;
  }));
  renderReview();
  $("exercise-side").replaceChildren(exerciseList(state.exercises, state.exercise));
}

function conceptTitle(id) {
  const n = state.course && state.course.graph.nodes.find(x => x.id === id);
  return n ? n.title : id;
}

function renderReview() {
  const box = $("review");
  const due = (state.course && state.course.review) || [];
  box.hidden = !due.length;
  if (!due.length) return;
  const ul = el("ul");
  for (const r of due) {
    const li = el("li");
    const a = el("a", null, r.title);
    a.href = "#/lesson/" + encodeURIComponent(r.lesson);
    li.append(a, document.createTextNode(" — " + (lessonById(r.lesson) || { title: r.lesson }).title));
    ul.append(li);
  }
  box.replaceChildren(el("h3", null, "Due for review"), ul);
}

function renderGlossary() {
  const entries = [...(state.course.glossary || [])].sort((a, b) => a.term.localeCompare(b.term));
  const list = $("glossary-list");
  list.replaceChildren(...entries.map(g => {
    const item = el("div", "glossary-entry");
    item.id = "glossary-" + g.id;
    item.dataset.testid = "glossary-term-" + g.id;
    item.dataset.search = [g.term, g.definition, g.formula || "", g.code || ""].join(" ").toLowerCase();
    item.tabIndex = -1;
    item.append(el("dt", "g-term", g.term));
    const dd = el("dd");
    dd.append(el("span", null, g.definition));
    if (g.formula) dd.append(el("span", "g-formula", g.formula));
    if (g.code) dd.append(el("code", "g-code", g.code));
    if (g.lesson && lessonById(g.lesson)) {
      const a = el("a", "g-lesson", "taught in: " + lessonById(g.lesson).title);
      a.href = "#/lesson/" + encodeURIComponent(g.lesson);
      dd.append(a);
    }
    item.append(dd);
    return item;
  }));
  filterGlossary();
}

function filterGlossary() {
  const q = $("glossary-search").value.trim().toLowerCase();
  let shown = 0;
  for (const item of $("glossary-list").children) {
    const on = !q || item.dataset.search.includes(q);
    item.hidden = !on;
    shown += on;
  }
  $("glossary-count").textContent = `${shown} of ${$("glossary-list").children.length} terms`;
}

function renderFaq() {
  $("faq-list").replaceChildren(...(state.course.faq || []).map(f => {
    const d = el("details", "faq-item");
    d.append(markupEl("summary", null, f.question, true), markupEl("div", "faq-answer", f.answer));
    if (f.lessons && f.lessons.length) {
      const p = el("p", "faq-lessons", "See: ");
      f.lessons.forEach((id, i) => {
        const a = el("a", null, (lessonById(id) || { title: id }).title);
        a.href = "#/lesson/" + encodeURIComponent(id);
        if (i) p.append(", ");
        p.append(a);
      });
      d.append(p);
    }
    return d;
  }));
}

async function loadCourse() {
  try {
    state.course = await api("/api/learn/course");
    setServer(true, "local server");
  } catch (e) {
    setServer(false, "server unreachable");
    showError("Could not load the course: " + e.message);
    throw e;
  }
  setGlossary(state.course.glossary);
  renderSide();
  renderGlossary();
  renderFaq();
}

async function loadExercises() {
  try {
    state.exercises = (await api("/api/learn/exercises")).exercises;
  } catch (e) {
    showError("Could not load the exercises: " + e.message);
  }
}

async function refreshCourse() {
  try {
    [state.course] = await Promise.all([api("/api/learn/course"), loadExercises()]);
    renderSide();
  } catch (e) {
    showError("Could not refresh the course: " + e.message);
  }
}

/* ───────────────────── navigation ───────────────────── */

function go(id) {
  const hash = "#/lesson/" + encodeURIComponent(id);
  if (location.hash === hash) openLesson(id);
  else location.hash = hash;
}

function onHash() {
  const m = /^#\/lesson\/([^/]+)$/.exec(location.hash);
  const x = /^#\/exercise\/([^/]+)$/.exec(location.hash);
  if (m) openLesson(decodeURIComponent(m[1]));
  else if (x) openExercise(decodeURIComponent(x[1]));
  else showHome();
}

function lessonTitle(id) { return (lessonById(id) || { title: id }).title; }

function openExercise(name) {
  clearWidgets();
  state.lesson = null;
  state.exercise = name;
  const view = $("lesson-view");
  view.dataset.lesson = "";
  const ex = state.exercises.find(e => e.name === name);
  if (!ex) {
    const box = el("div", "alert", `No exercise called "${name}".`);
    box.setAttribute("role", "alert");
    view.replaceChildren(box);
    return;
  }
  view.replaceChildren(exerciseView(ex, { lessonTitle, after: () => refreshCourse() }));
  view.dataset.state = "ready";
  renderSide();
  $("lesson-title").focus({ preventScroll: false });
}

function clearWidgets() {
  for (const w of state.widgets) { clearTimeout(w.timer); if (w.abort) w.abort.abort(); }
  state.widgets = [];
}

function showHome() {
  clearWidgets();
  state.lesson = null;
  state.exercise = null;
  const view = $("lesson-view");
  view.dataset.lesson = "";
  const c = state.course;
  const next = [...c.lessons].sort((a, b) => a.order - b.order).find(l => l.state === "open")
    || c.lessons.find(l => l.state !== "locked");
  const home = el("div", "card home");
  home.append(el("h2", null, "Attention, one idea at a time"));
  home.append(el("p", null, "Each lesson builds one piece of the attention mechanism. Every number on this page is "
    + "computed by qkv, on this machine, for the input you choose. Pick a route: the overview in a minute, the build-up "
    + "one step at a time, or the code first. Each ends with a short knowledge check; master it to unlock the next "
    + "pieces of the graph."));
  if (next) {
    const a = el("a", "button primary", (next.state === "open" ? "Start: " : "Revisit: ") + next.title);
    a.href = "#/lesson/" + encodeURIComponent(next.id);
    a.dataset.testid = "start-lesson";
    home.append(a);
  }
  const done = c.lessons.filter(l => l.state === "mastered").length;
  home.append(el("p", "muted", `${done} of ${c.lessons.length} lessons mastered.`));
  view.replaceChildren(home);
  renderSide();
}

async function openLesson(id) {
  clearWidgets();
  state.exercise = null;
  const view = $("lesson-view");
  view.dataset.state = "loading";
  view.replaceChildren(el("p", "muted loading", "Loading the lesson…"));
  let lesson;
  try {
    lesson = await api("/api/learn/lessons/" + encodeURIComponent(id));
  } catch (e) {
    view.dataset.state = "error";
    const box = el("div", "alert", "Could not load the lesson: " + e.message);
    box.setAttribute("role", "alert");
    view.replaceChildren(box);
    return;
  }
  state.lesson = lesson;
  state.answers = Object.assign({}, (lesson.progress && lesson.progress.answers) || {});
  const route = lesson.progress && lesson.progress.route;
  state.route = ROUTES.some(r => r[0] === route) ? route : "build-up";
  state.step = Math.max(0, Math.min((lesson.progress && lesson.progress.step) || 0, lesson.steps.length));
  state.unlocked = state.unlocked.filter(Boolean);
  renderLesson();
  renderSide();
  view.dataset.state = "ready";
  $("lesson-title").focus({ preventScroll: false });
}

function savePosition() {
  const l = state.lesson;
  if (!l) return;
  const step = state.route === "build-up" ? state.step : 0;  // the other routes are one page each
  api("/api/learn/position", { lesson: l.id, route: state.route, step })
    .catch(e => showError("Could not remember where you are: " + e.message));
}

/* ───────────────────── a lesson ───────────────────── */

function renderLesson() {
  const l = state.lesson;
  const view = $("lesson-view");
  view.dataset.lesson = l.id;
  const art = el("article", "lesson card");
  const head = el("header", "lesson-head");
  const crumb = el("p", "crumb", `Lesson ${l.order} · about ${l.minutes} min · `);
  crumb.append(stateBadge(l.state));
  const h = el("h2", "lesson-h", l.title);
  h.id = "lesson-title";
  h.tabIndex = -1;
  head.append(crumb, h);
  if (l.state === "locked") {
    head.append(el("p", "note", "This lesson is still locked: master "
      + l.prerequisites.map(conceptTitle).join(", ") + " first. You can read it anyway."));
  }
  const tabs = el("div", "route-tabs");
  tabs.setAttribute("role", "tablist");
  tabs.setAttribute("aria-label", "Route through the lesson");
  for (const [name, label] of ROUTES) {
    const t = el("button", "tab", label);
    t.type = "button";
    t.setAttribute("role", "tab");
    t.id = "route-tab-" + name;
    t.dataset.tab = name;
    t.dataset.testid = "route-" + name;
    t.setAttribute("aria-controls", "route-panel");
    tabs.append(t);
  }
  const panel = el("div", "route-panel");
  panel.id = "route-panel";
  panel.setAttribute("role", "tabpanel");
  head.append(tabs);
  art.append(head, panel);
  view.replaceChildren(art);
  tablist(tabs, name => {
    if (name === state.route) return;
    state.route = name;
    savePosition();
    renderRoute();
  });
  renderRoute();
}

function markRouteTabs() {
  for (const t of document.querySelectorAll(".route-tabs [role=tab]")) {
    const on = t.dataset.tab === state.route;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
  }
  $("route-panel").setAttribute("aria-labelledby", "route-tab-" + state.route);
}

function renderRoute() {
  clearWidgets();
  markRouteTabs();
  const panel = $("route-panel");
  panel.dataset.route = state.route;
  const l = state.lesson;
  const parts = [];
  if (state.route === "overview") {
    parts.push(markupEl("div", "overview prose", l.overview));
    parts.push(end());
  } else if (state.route === "code-first") {
    parts.push(codeFirst());
    parts.push(end());
  } else if (state.step < l.steps.length) {
    parts.push(stepView());
  } else {
    parts.push(stepsDone(), end());
  }
  panel.replaceChildren(...parts);
}

function widgetFor(name, args, opts) {
  const spec = state.lesson.widgets && state.lesson.widgets[name];
  if (!spec) {
    const box = el("div", "alert", `This lesson names a widget (${name}) the server did not describe.`);
    box.setAttribute("role", "alert");
    return { root: box, args: args || {}, onResult() {}, unveil() {} };
  }
  const w = new LiveWidget(spec, args, opts);
  state.widgets.push(w);
  return w;
}

function stepProgress() {
  const n = state.lesson.steps.length;
  const ol = el("ol", "step-dots");
  ol.setAttribute("aria-label", "Steps");
  for (let i = 0; i <= n; i++) {
    const li = el("li", i < state.step ? "done" : i === state.step ? "now" : "");
    li.title = i < n ? state.lesson.steps[i].title : "Summary and knowledge check";
    if (i === state.step) li.setAttribute("aria-current", "step");
    ol.append(li);
  }
  return ol;
}

function stepView() {
  const l = state.lesson, i = state.step, s = l.steps[i];
  const box = el("section", "step");
  box.dataset.step = String(i);
  box.dataset.testid = "step";
  const label = el("p", "step-count", `Step ${i + 1} of ${l.steps.length}`);
  const h = el("h3", "step-title", s.title);
  h.id = "step-title";
  h.tabIndex = -1;
  box.append(stepProgress(), label, h, markupEl("div", "prose", s.text));
  let widget = null;
  const predict = s.predict ? (l.questions || []).find(q => q.id === s.predict) : null;
  const unveiled = predict && state.answers[predict.id];
  if (s.widget) {
    const live = s.reveal && !predict ? { step: { lesson: l.id, step: i } } : {};
    widget = widgetFor(s.widget, s.args, { gated: !!predict && !unveiled, ...live });
    box.append(widget.root);
    if (live.step) {  // no question to answer: the step's reveal follows the widget, for the learner's input
      const said = el("div", "step-reveal");
      said.dataset.testid = "step-reveal";
      said.setAttribute("aria-live", "polite");
      box.append(said);
      widget.onResult(r => { if (r.reveal) said.replaceChildren(markupEl("div", "reveal prose", r.reveal)); });
    }
  }
  if (predict) {
    let qWidget = widget;
    if (predict.widget && (!widget || predict.widget !== s.widget)) {
      qWidget = widgetFor(predict.widget, predict.args, {});
      box.append(qWidget.root);
    }
    const question = new Question(predict, {
      lesson: l.id, widget: qWidget, answered: false,
      onAnswer: (q, r) => {
        state.answers[predict.id] = { correct: r.correct };
        if (widget) widget.unveil();
        afterAnswer(r);
      },
    });
    box.append(question.root);
    if (unveiled) box.append(el("p", "note", "You committed to an answer earlier; the computation is shown."));
  }
  const nav = el("div", "step-nav");
  if (i > 0) {
    const back = el("button", "secondary", "Back");
    back.type = "button";
    back.dataset.testid = "step-back";
    back.addEventListener("click", () => moveStep(-1));
    nav.append(back);
  }
  const cont = el("button", "primary", i + 1 < l.steps.length ? "Continue" : "Continue to the summary");
  cont.type = "button";
  cont.id = "step-continue";
  cont.dataset.testid = "step-continue";
  cont.setAttribute("aria-keyshortcuts", "Space Enter");
  cont.addEventListener("click", () => moveStep(1));
  nav.append(cont, el("span", "help", "or press Space"));
  box.append(nav);
  return box;
}

function moveStep(delta) {
  state.step = Math.max(0, Math.min(state.step + delta, state.lesson.steps.length));
  savePosition();
  renderRoute();
  const target = $("step-title") || $("end-title");
  if (target) target.focus();
}

function stepsDone() {
  const box = el("div", "step-nav steps-done");
  const back = el("button", "secondary", "Back to the last step");
  back.type = "button";
  back.dataset.testid = "step-back";
  back.addEventListener("click", () => moveStep(-1));
  box.append(stepProgress(), back);
  return box;
}

/* Space or Enter anywhere that is not a control continues the build-up. */
function onKey(e) {
  if ((e.key !== " " && e.key !== "Enter") || e.altKey || e.ctrlKey || e.metaKey) return;
  if (state.route !== "build-up" || !$("step-continue")) return;
  const t = e.target;
  const inert = t === document.body || t.id === "step-title" || t.id === "lesson-title"
    || (t.closest && t.closest(".step") && !t.closest("button, a, input, select, textarea, label, [role=grid], [tabindex='0']"));
  if (!inert) return;
  e.preventDefault();
  $("step-continue").click();
}

function codeFirst() {
  const l = state.lesson;
  const box = el("section", "code-first");
  if (!l.code.length) box.append(el("p", "muted", "This lesson has no code route."));
  for (const c of l.code) {
    const item = el("div", "snippet");
    item.dataset.testid = "snippet-" + c.index;
    item.append(el("h3", null, c.title), markupEl("div", "prose", c.text));
    const pre = el("pre", "code-block");
    pre.append(el("code", null, c.code));
    const run = el("button", "primary", "Run");
    run.type = "button";
    run.dataset.testid = "run-" + c.index;
    const out = el("pre", "output");
    out.setAttribute("aria-live", "polite");
    out.dataset.testid = "output-" + c.index;
    out.hidden = true;
    run.addEventListener("click", async () => {
      run.disabled = true;
      out.hidden = false;
      out.className = "output running";
      out.textContent = "running…";
      try {
        const r = await api("/api/learn/run", { lesson: l.id, snippet: c.index });
        out.className = "output " + (r.ok ? "ok" : "failed");
        out.textContent = (r.output || "(no output)") + `\n— ${r.ok ? "ran" : "failed"} in ${(+r.seconds).toFixed(2)} s`;
      } catch (e) {
        out.className = "output failed";
        out.textContent = "Could not run: " + e.message;
      } finally {
        run.disabled = false;
      }
    });
    item.append(pre, run, out);
    box.append(item);
  }
  return box;
}

/* ── the end of every route: summary, myths, pitfalls, knowledge check ── */

function end() {
  const l = state.lesson;
  const box = el("section", "lesson-end");
  const h = el("h3", null, "Summary");
  h.id = "end-title";
  h.tabIndex = -1;
  const ul = el("ul", "summary");
  for (const s of l.summary || []) ul.append(markupEl("li", null, s, true));
  box.append(h, ul);
  if ((l.myths || []).length) {
    box.append(el("h3", null, "Myths"));
    l.myths.forEach((m, i) => box.append(myth(m, i)));
  }
  if ((l.pitfalls || []).length) {
    box.append(el("h3", null, "Pitfalls"));
    for (const p of l.pitfalls) box.append(pitfall(p));
  }
  box.append(knowledgeCheck());
  const mine = state.exercises.filter(e => e.lesson === l.id);
  if (mine.length) {
    const write = el("section", "write-it");
    write.append(el("h3", null, "Write it yourself"));
    const ul = el("ul");
    for (const e of mine) {
      const a = el("a", null, e.title);
      a.href = "#/exercise/" + encodeURIComponent(e.name);
      const li = el("li");
      li.append(a, el("span", "muted", " — " + e.signature));
      ul.append(li);
    }
    write.append(ul);
    box.append(write);
  }
  return box;
}

function myth(m, i) {
  const d = el("div", "myth");
  d.dataset.testid = "myth-" + i;
  const belief = el("p", "belief");
  belief.append(el("span", "myth-label", "Myth: "), markup(m.belief, true));
  const reveal = el("button", "secondary", "Tap to reveal reality");
  reveal.type = "button";
  const body = el("div", "reality");
  body.id = "myth-reality-" + i;
  body.hidden = true;
  reveal.setAttribute("aria-expanded", "false");
  reveal.setAttribute("aria-controls", body.id);
  reveal.addEventListener("click", () => {
    const open = body.hidden;
    body.hidden = !open;
    reveal.setAttribute("aria-expanded", String(open));
    reveal.textContent = open ? "Hide" : "Tap to reveal reality";
    if (open && !body.childElementCount) {
      const p = el("div", "prose");
      p.append(el("span", "reality-label", "Reality: "), markup(m.reality));
      body.append(p);
      if (m.widget) body.append(widgetFor(m.widget, m.args, {}).root);
    }
  });
  d.append(belief, reveal, body);
  return d;
}

function codeBox(label, code, cls) {
  const f = el("figure", "code-side " + cls);
  const cap = el("figcaption");
  const icon = el("span", "icon", cls === "wrong" ? "✗" : cls === "right" ? "✓" : "");
  icon.setAttribute("aria-hidden", "true");
  cap.append(icon, document.createTextNode(" " + label));
  const pre = el("pre", "code-block");
  pre.append(el("code", null, String(code || "").replace(/\s+$/, "")));
  f.append(cap, pre);
  return f;
}

function pitfall(p) {
  const d = el("div", "pitfall");
  d.append(el("h4", null, p.title), markupEl("div", "prose", p.why));
  if (p.setup && p.setup.trim()) d.append(codeBox("Setup", p.setup, "setup"));
  const pair = el("div", "pair");
  pair.append(codeBox("Wrong", p.wrong, "wrong"), codeBox("Right", p.right, "right"));
  d.append(pair);
  return d;
}

function knowledgeCheck() {
  const l = state.lesson;
  const box = el("section", "knowledge-check");
  box.dataset.testid = "knowledge-check";
  box.append(el("h3", null, "Knowledge check"));
  const checks = (l.questions || []).filter(q => q.phase === "check");
  box.append(el("p", "help", `${checks.length} questions. Answer all of them correctly (retries allowed) to master the lesson.`));
  const banner = el("div", "mastered-banner");
  banner.dataset.testid = "mastered-banner";
  banner.setAttribute("role", "status");
  banner.hidden = l.state !== "mastered";
  if (l.state === "mastered") fillBanner(banner, false, []);
  for (const q of checks) {
    const widget = q.widget ? widgetFor(q.widget, q.args, {}) : null;
    const question = new Question(q, {
      lesson: l.id, widget, answered: !!(state.answers[q.id] && state.answers[q.id].correct),
      onAnswer: (_, r) => {
        state.answers[q.id] = { correct: r.correct };
        afterAnswer(r, banner);
      },
    });
    if (widget) question.root.insertBefore(widget.root, question.answerBox);
    box.append(question.root);
  }
  box.append(banner);
  return box;
}

function fillBanner(banner, fresh, unlocked) {
  const l = state.lesson;
  banner.replaceChildren();
  const icon = el("span", "icon", "✓");
  icon.setAttribute("aria-hidden", "true");
  banner.append(icon, el("b", null, fresh ? " Lesson mastered!" : " Lesson mastered."));
  if (unlocked.length) banner.append(el("span", "unlocked-list", " Unlocked: " + unlocked.map(conceptTitle).join(", ") + "."));
  const next = [...state.course.lessons].sort((a, b) => a.order - b.order)
    .find(x => x.order > l.order && x.state !== "locked");
  if (next) {
    const a = el("a", "button primary", "Next lesson: " + next.title);
    a.href = "#/lesson/" + encodeURIComponent(next.id);
    a.dataset.testid = "next-lesson";
    banner.append(a);
  }
  banner.hidden = false;
}

async function afterAnswer(r, banner) {
  if (r.lesson_state && state.lesson) state.lesson.state = r.lesson_state;
  if (r.unlocked && r.unlocked.length) state.unlocked = [...new Set([...state.unlocked, ...r.unlocked])];
  const changed = r.mastered || (r.unlocked && r.unlocked.length) || !r.correct;
  if (changed) await refreshCourse();
  if (r.mastered && banner) {
    fillBanner(banner, true, r.unlocked || []);
    const crumb = document.querySelector(".lesson-head .crumb .state-badge");
    if (crumb) crumb.replaceWith(stateBadge("mastered"));
  }
}

/* ───────────────────── reset ───────────────────── */

function setupReset() {
  const dialog = $("reset-dialog");
  $("reset-open").addEventListener("click", () => dialog.showModal());
  $("reset-cancel").addEventListener("click", () => dialog.close());
  $("reset-confirm").addEventListener("click", async () => {
    dialog.close();
    try {
      await api("/api/learn/progress", undefined, undefined, "DELETE");
    } catch (e) {
      showError("Could not reset the progress: " + e.message);
      return;
    }
    state.unlocked = [];
    await refreshCourse();
    if (location.hash) location.hash = ""; else showHome();
  });
}

/* ───────────────────── start ───────────────────── */

async function start() {
  const side = $("side-tabs");
  tablist(side, name => selectTab(side, name));
  selectTab(side, "path");
  $("glossary-search").addEventListener("input", filterGlossary);
  document.addEventListener("learn:term", e => {
    selectTab(side, "glossary");
    $("glossary-search").value = "";
    filterGlossary();
    const item = $("glossary-" + e.detail.id);
    if (item) {
      item.classList.add("flash");
      setTimeout(() => item.classList.remove("flash"), 1500);
      item.scrollIntoView({ block: "nearest" });
    }
  });
  document.addEventListener("keydown", onKey);
  setupReset();
  window.addEventListener("hashchange", onHash);
  try {
    await Promise.all([loadCourse(), loadExercises()]);
    renderSide();
  } catch (e) {
    $("lesson-view").replaceChildren(el("p", "muted", "The course could not be loaded."));
    return;
  }
  onHash();
  document.body.dataset.ready = "true";
}

window.addEventListener("unhandledrejection", e => {
  showError("Something went wrong: " + (e.reason && e.reason.message ? e.reason.message : String(e.reason)));
  e.preventDefault();
});

start();

/* qkv learn: the course's small markup subset, rendered as DOM nodes (never innerHTML).

   Blocks: paragraphs (blank line), fenced ``` code blocks, "- " lists.
   Inline: **bold**, *italic*, `code`, [words](term:ID) (a glossary term: a button whose
   definition shows on hover and on keyboard focus), [words](lesson:ID) (a link to a lesson).
   Text is only ever set with textContent, so nothing in a lesson can inject markup. */

let glossary = new Map();   // id -> {term, definition, formula?, code?, lesson?}
let tipCount = 0;

export function setGlossary(entries) {
  glossary = new Map((entries || []).map(e => [e.id, e]));
}

export function glossaryEntry(id) { return glossary.get(id); }

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

/* The earliest inline construct in `s`; patterns are tried at every position in this order. */
const INLINE = [
  ["code", /`([^`]+)`/],
  ["link", /\[([^\]]+)\]\((term|lesson):([A-Za-z0-9_.-]+)\)/],
  ["bold", /\*\*([^*]+(?:\*(?!\*)[^*]*)*)\*\*/],
  ["italic", /\*([^*\s](?:[^*]*[^*\s])?)\*/],
];

function inline(text, parent) {
  let s = String(text);
  while (s.length) {
    let best = null;
    for (const [kind, re] of INLINE) {
      const m = re.exec(s);
      if (m && (best === null || m.index < best.m.index)) best = { kind, m };
    }
    if (best === null) { parent.append(document.createTextNode(s)); break; }
    const { kind, m } = best;
    if (m.index > 0) parent.append(document.createTextNode(s.slice(0, m.index)));
    if (kind === "code") parent.append(el("code", null, m[1]));
    else if (kind === "bold") { const b = el("strong"); inline(m[1], b); parent.append(b); }
    else if (kind === "italic") { const i = el("em"); inline(m[1], i); parent.append(i); }
    else if (m[2] === "term") parent.append(termButton(m[1], m[3]));
    else parent.append(lessonLink(m[1], m[3]));
    s = s.slice(m.index + m[0].length);
  }
  return parent;
}

export function lessonLink(words, id) {
  const a = el("a", "lesson-link");
  a.href = "#/lesson/" + encodeURIComponent(id);
  inline(words, a);
  return a;
}

/* A glossary term: a button described by a tooltip that shows on hover and on focus (CSS),
   and that Escape hides while the focus stays. */
export function termButton(words, id) {
  const entry = glossary.get(id);
  const wrap = el("span", "term-wrap");
  const button = el("button", "term");
  button.type = "button";
  button.dataset.term = id;
  inline(words, button);
  wrap.append(button);
  if (!entry) { button.classList.add("unknown"); return wrap; }
  const tip = el("span", "tooltip");
  tip.id = "tip-" + (++tipCount);
  tip.setAttribute("role", "tooltip");
  tip.append(el("b", "tip-term", entry.term), document.createTextNode(": " + entry.definition));
  if (entry.formula) tip.append(el("span", "tip-formula", entry.formula));
  if (entry.code) tip.append(el("code", "tip-code", entry.code));
  button.setAttribute("aria-describedby", tip.id);
  button.addEventListener("keydown", e => { if (e.key === "Escape") wrap.classList.add("tip-off"); });
  button.addEventListener("blur", () => wrap.classList.remove("tip-off"));
  button.addEventListener("mouseleave", () => wrap.classList.remove("tip-off"));
  button.addEventListener("click", () => {
    document.dispatchEvent(new CustomEvent("learn:term", { detail: { id } }));
  });
  wrap.append(tip);
  return wrap;
}

/* Markup text -> a DocumentFragment of blocks. `inlineOnly`: one line, no <p>. */
export function markup(text, inlineOnly = false) {
  const frag = document.createDocumentFragment();
  if (text === null || text === undefined) return frag;
  if (inlineOnly) { inline(text, frag); return frag; }
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let para = [], list = null, i = 0;
  const flushPara = () => {
    if (para.length) { frag.append(inline(para.join(" ").trim(), el("p"))); para = []; }
  };
  const flushList = () => { if (list) { frag.append(list); list = null; } };
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s*```(\w*)\s*$/.exec(line);
    if (fence) {
      flushPara(); flushList();
      const body = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
      i++;
      const pre = el("pre", "code-block");
      const code = el("code", null, body.join("\n"));
      if (fence[1]) code.dataset.lang = fence[1];
      pre.append(code);
      frag.append(pre);
      continue;
    }
    const item = /^\s*-\s+(.*)$/.exec(line);
    if (item) {
      flushPara();
      if (!list) list = el("ul");
      list.append(inline(item[1], el("li")));
    } else if (!line.trim()) {
      flushPara(); flushList();
    } else if (list && /^\s{2,}\S/.test(line)) {
      list.lastChild.append(document.createTextNode(" "));
      inline(line.trim(), list.lastChild);
    } else {
      flushList();
      para.push(line.trim());
    }
    i++;
  }
  flushPara(); flushList();
  return frag;
}

/* A fresh element holding rendered markup. */
export function markupEl(tag, cls, text, inlineOnly = false) {
  const e = el(tag, cls);
  e.append(markup(text, inlineOnly));
  return e;
}

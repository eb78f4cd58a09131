/* qkv explorer: the two DOM helpers every part of the page uses. */

export const $ = id => document.getElementById(id);

/* a new element with an optional class and text (text is only ever set with textContent) */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

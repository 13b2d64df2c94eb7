// Building DOM nodes: text is always set as text, never parsed as markup.

/**
 * h("a", {href: "#/fleet", class: "nav"}, "Fleet") → <a href="#/fleet" class="nav">Fleet</a>
 * Props: class, text, on{Event} handlers, dataset (object), anything else as an attribute
 * (null/false leave it out, true sets it empty). Children: nodes, strings, arrays, null.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "style") throw new Error("inline styles break the CSP: use a class");
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A table with a header row; rows are arrays of cells (nodes or text). */
export function table(headers, rows, {caption = null, empty = "Nothing to show."} = {}) {
  const body = rows.length
    ? rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))
    : [h("tr", {}, h("td", {colspan: headers.length, class: "empty"}, empty))];
  return h("div", {class: "table-wrap", tabindex: 0, role: "region",
                   "aria-label": caption || headers.join(", ")},
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((title) => h("th", {scope: "col"}, title)))),
      h("tbody", {}, body)));
}

/** A state badge: the state's name on its colour. */
export function badge(state, extra = "") {
  const name = state || "UNKNOWN";
  return h("span", {class: `badge badge-${name.toLowerCase()} ${extra}`.trim()}, name);
}

/** A select bound to options [[value, label], ...]. */
export function select(label, options, value, onChange, id) {
  const control = h("select", {id, onchange: (e) => onChange(e.target.value)},
    options.map(([v, text]) => h("option", {value: v, selected: String(v) === String(value)},
                                  text)));
  return h("label", {class: "field", for: id}, h("span", {}, label), control);
}

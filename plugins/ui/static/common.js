// What the dashboard's scripts share (inlined first, before dashboard.js and jobs.js): the
// page's token, element builders that write daemon data only as text or attribute values, and
// GET on the JSON API with the token as a bearer header.
const scheddUi = (() => {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const token = new URLSearchParams(location.search).get("token") || "";

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  // The answer's JSON; an Error with the API's message when the status is not 2xx.
  async function get(path) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        message = (await response.json()).error.message;
      } catch (_) { /* not our JSON */ }
      throw new Error(message);
    }
    return response.json();
  }

  return { token, el, svg, get };
})();

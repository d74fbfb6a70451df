// MathJax typesets what pymdownx.arithmatex marked (class "arithmatex": \( \) inline, \[ \] display), nothing else.
// SVG output: no web fonts to load, so the equations render from disk (file://) and offline.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex", enableMenu: false },
  svg: { fontCache: "global" },
};

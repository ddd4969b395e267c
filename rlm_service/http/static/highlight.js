// A tiny Python highlighter: one regex pass, output escaped. No CDN (no internet at runtime).
(function () {
  "use strict";
  const KW = new Set(("False None True and as assert async await break class continue def del elif else except " +
    "finally for from global if import in is lambda nonlocal not or pass raise return try while with yield").split(" "));
  const FN = new Set("print len range str int float dict list set tuple sorted enumerate zip llm_query llm_query_batched rlm_query rlm_query_batched FINAL FINAL_VAR SHOW_VARS".split(" "));
  const TOKEN = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|[rbfu]{0,2}"(?:\\.|[^"\\\n])*"|[rbfu]{0,2}'(?:\\.|[^'\\\n])*')|(\b\d[\d_]*(?:\.\d+)?(?:e[+-]?\d+)?\b)|([A-Za-z_][A-Za-z0-9_]*)/g;
  function esc(s) { return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function highlight(code) {
    let out = "", last = 0, m;
    TOKEN.lastIndex = 0;
    while ((m = TOKEN.exec(code)) !== null) {
      out += esc(code.slice(last, m.index));
      const t = esc(m[0]);
      if (m[1]) out += '<span class="tok-com">' + t + "</span>";
      else if (m[2]) out += '<span class="tok-str">' + t + "</span>";
      else if (m[3]) out += '<span class="tok-num">' + t + "</span>";
      else if (KW.has(m[4])) out += '<span class="tok-kw">' + t + "</span>";
      else if (FN.has(m[4])) out += '<span class="tok-fn">' + t + "</span>";
      else out += t;
      last = TOKEN.lastIndex;
    }
    return out + esc(code.slice(last));
  }
  window.rlmHighlight = highlight;
})();

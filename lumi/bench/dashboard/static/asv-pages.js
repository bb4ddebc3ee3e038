/* lumi's defaults for asv's graph pages, from window.LUMI_DASHBOARD (lumi/data.js, written by
 * `lumi dashboard`). A graph link with no settings of its own opens
 *   - on a log y axis when the benchmark's values span more than a decade (log_axis), and
 *   - with every config that has points selected (with_points; asv alone shows the first 8 by
 *     name, points or not), so the legend holds all the lines and no
 *     empty entries; overview.html says why the others have none.
 * Runs before asv's own code reads the location (this file loads in <head>, asv starts on
 * document ready), and rewrites graph links as they are clicked. Links that carry settings
 * (a '?' in the hash) are left as they are. */
(function () {
    "use strict";
    var data = window.LUMI_DASHBOARD;
    if (!data) {
        return;
    }

    function withDefaults(hash) {
        var m = /^#\/?(benchmarks\.[^?]+)$/.exec(hash || "");
        if (!m) {
            return hash;
        }
        var name = decodeURIComponent(m[1]);
        var parts = [];
        if (data.log_axis.indexOf(name) !== -1) {
            parts.push("y-axis-scale=log");
        }
        data.with_points.forEach(function (config) {
            parts.push("p-config=" + encodeURIComponent("'" + config + "'"));
        });
        return parts.length ? "#" + m[1] + "?" + parts.join("&") : hash;
    }

    var start = withDefaults(window.location.hash);
    if (start !== window.location.hash) {
        history.replaceState(null, "", start);
    }
    document.addEventListener("click", function (evt) {
        var a = evt.target.closest ? evt.target.closest("a[href^='#benchmarks.']") : null;
        if (a) {
            a.setAttribute("href", withDefaults(a.getAttribute("href")));
        }
    }, true);
})();

/* overview.html: sec/token per config over commits, one flot plot per benchmark and tier, from
 * window.LUMI_DASHBOARD (lumi/data.js; its shape is lumi.bench.dashboard.overview_data's). */
(function ($) {
    "use strict";
    var data = window.LUMI_DASHBOARD;

    function seconds(v) {
        if (v >= 1) { return v.toPrecision(3) + " s"; }
        if (v >= 1e-3) { return (v * 1e3).toPrecision(3) + " ms"; }
        return (v * 1e6).toPrecision(3) + " \u00b5s";
    }

    function logTicks(lo, hi) {
        var ticks = [];
        for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
            [1, 2, 5].forEach(function (k) {
                var v = k * Math.pow(10, e);
                if (v >= lo / 1.5 && v <= hi * 1.5) { ticks.push(v); }
            });
        }
        return ticks;
    }

    // at most n of the plotted commits, labelled by short hash, at least 1/n of the axis apart
    function revisionTicks(series, n) {
        var seen = {};
        series.forEach(function (s) { s.data.forEach(function (p) { seen[p[0]] = true; }); });
        var revs = Object.keys(seen).map(Number).sort(function (a, b) { return a - b; });
        var gap = (revs[revs.length - 1] - revs[0]) / n, ticks = [];
        revs.forEach(function (r) {
            if (!ticks.length || r - ticks[ticks.length - 1][0] >= gap) {
                ticks.push([r, (data.revisions[String(r)] || ["?"])[0]]);
            }
        });
        return ticks;
    }

    function graphLink(benchmark, config, machine) {
        var hash = "#" + benchmark + "?p-config=" + encodeURIComponent("'" + config + "'");
        if (machine) { hash += "&machine=" + encodeURIComponent(machine); }
        if (data.log_axis.indexOf(benchmark) !== -1) { hash += "&y-axis-scale=log"; }
        return "index.html" + hash;
    }

    function plot(target, bench, tier) {
        var machines = Object.keys(data.machines);
        var series = [], lo = Infinity, hi = 0;
        tier.configs.forEach(function (c) {
            machines.forEach(function (m) {
                var pts = c.machines[m] || [];
                if (!pts.length) { return; }
                pts.forEach(function (p) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); });
                series.push({label: machines.length > 1 ? c.config + " @ " + m : c.config,
                             data: pts.map(function (p) { return [Number(p[0]), p[1]]; })});
            });
        });
        if (!series.length) {
            target.addClass("lumi-empty").text("No points for tier " + tier.tier + " on any machine (the table says why).");
            return;
        }
        var yaxis = {tickFormatter: seconds, axisLabel: bench.unit};
        if (tier.log) {
            yaxis.transform = function (v) { return Math.log10(v); };
            yaxis.inverseTransform = function (v) { return Math.pow(10, v); };
            yaxis.ticks = logTicks(lo, hi);
            yaxis.min = lo / 1.5;
            yaxis.max = hi * 1.5;
        } else {
            yaxis.min = 0;
        }
        var legend = $("<div class='lumi-legend'/>").insertAfter(target);
        $.plot(target, series, {
            series: {lines: {show: true}, points: {show: true, radius: 2}},
            xaxis: {ticks: revisionTicks(series, 8)},
            yaxis: yaxis,
            legend: {container: legend, noColumns: 4},
            grid: {hoverable: true}
        });
        target.attr("data-series", series.length).attr("data-log", tier.log ? "1" : "0");
    }

    function table(bench, tier) {
        var machines = Object.keys(data.machines);
        var t = $("<table class='table table-condensed lumi-table'/>");
        var head = $("<tr/>").append("<th>config</th>");
        machines.forEach(function (m) { head.append($("<th/>").text(m)); });
        head.append("<th>purpose</th>");
        t.append($("<thead/>").append(head));
        var body = $("<tbody/>");
        tier.configs.forEach(function (c) {
            var row = $("<tr/>").append($("<td/>").text(c.config));
            var any = false;
            machines.forEach(function (m) {
                var pts = c.machines[m] || [];
                var cell = $("<td/>");
                if (pts.length) {
                    any = true;
                    var last = pts[pts.length - 1];
                    cell.append($("<a/>").attr("href", graphLink(bench.benchmark, c.config, m))
                        .text(seconds(last[1]) + " at " + (data.revisions[last[0]] || ["?"])[0]));
                    cell.append($("<span class='lumi-count'/>").text(" (" + pts.length + " commits)"));
                } else {
                    cell.addClass("lumi-none").text("no points: " + c.why_empty);
                }
                row.append(cell);
            });
            row.append($("<td class='lumi-purpose'/>").text(c.purpose));
            if (!any) { row.addClass("lumi-unmeasured"); }
            body.append(row);
        });
        return t.append(body);
    }

    function regressions() {
        var box = $("#regressions");
        if (!data.regressions.length) {
            box.text("asv detects no regressions in this history (its threshold: regressions_thresholds in asv.conf.json).");
            return;
        }
        var t = $("<table class='table table-condensed'/>").append(
            "<thead><tr><th>benchmark</th><th>config</th><th>machine</th><th>commits</th><th>before</th><th>after</th><th>ratio</th></tr></thead>");
        data.regressions.forEach(function (r) {
            r.jumps.forEach(function (j) {
                var commits = j.before ? j.before + ".." + j.after : j.after;
                var link = $("<a/>").attr("href", "index.html#" + r.benchmark + "?p-config=" +
                    encodeURIComponent("'" + r.config + "'") + "&commits=" + encodeURIComponent(j.before ? j.before + "-" + j.after : j.after))
                    .text(r.benchmark.split(".").slice(1, 2).join(""));
                t.append($("<tr/>").append($("<td/>").append(link), $("<td/>").text(r.config || ""),
                    $("<td/>").text(r.machine || ""), $("<td/>").text(commits), $("<td/>").text(seconds(j.from)),
                    $("<td/>").text(seconds(j.to)), $("<td/>").text((j.to / j.from).toFixed(2) + "x")));
            });
        });
        box.append(t);
    }

    $(function () {
        $("#project").text(data.project || "lumi");
        var ms = $("#machines");
        $.each(data.machines, function (name, m) {
            ms.append($("<li/>").text(name + ": " + [m.cpu, m.num_cpu + " cores", (Number(m.ram) / 2 ** 30).toFixed(0) + " GiB", m.os].join(", ")));
        });
        regressions();
        var main = $("#benchmarks");
        data.benchmarks.forEach(function (bench) {
            var section = $("<section/>").append($("<h2/>").text(bench.title + " (" + bench.unit + ")"));
            main.append(section);  // flot needs its placeholder laid out
            bench.tiers.forEach(function (tier) {
                section.append($("<h3/>").text("tier " + tier.tier + (tier.log ? " (log axis: the configs span decades)" : "")));
                var target = $("<div class='lumi-plot'/>").attr("id", "plot-" + bench.title + "-" + tier.tier);
                section.append(target);
                plot(target, bench, tier);
                section.append(table(bench, tier));
            });
        });
        $("body").attr("data-ready", "1");
    });
})(jQuery);

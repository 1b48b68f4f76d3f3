// Draws the charts page from /admin/charts.json (same origin, the session cookie rides along).
(async function () {
  const root = document.getElementById("charts");
  const data = await (await fetch(root.dataset.source, { credentials: "same-origin" })).json();
  const line = (id, datasets, opts = {}) => new Chart(document.getElementById(id), {
    type: "line",
    data: { labels: data.labels, datasets },
    options: { animation: false, spanGaps: true, scales: { y: { beginAtZero: true, ...opts } } },
  });
  line("chart-finished", [{ label: "finished / min", data: data.finished_per_minute, borderColor: "#2563eb" }]);
  line("chart-queue", [
    { label: "p50", data: data.queue_p50, borderColor: "#16a34a" },
    { label: "p95", data: data.queue_p95, borderColor: "#dc2626" },
  ]);
  line("chart-run", [
    { label: "p50", data: data.run_p50, borderColor: "#16a34a" },
    { label: "p95", data: data.run_p95, borderColor: "#dc2626" },
  ]);
  line("chart-cache", [{ label: "% reused", data: data.cache_reuse_percent, borderColor: "#9333ea" }], { max: 100 });
  new Chart(document.getElementById("chart-batch"), {
    type: "bar",
    data: { labels: data.batch_sizes.sizes, datasets: [{ label: "forwards", data: data.batch_sizes.forwards, backgroundColor: "#f59e0b" }] },
    options: { animation: false },
  });
  root.dataset.ready = "1";
})();

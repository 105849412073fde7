/* New-run form: the data picker and the path field exclude each other, and the button says the run is starting. */
(function () {
  "use strict";
  const form = document.getElementById("new-run-form");
  if (!form) return;
  const picker = document.getElementById("data-source");
  const path = document.getElementById("in-data.train");
  if (picker && path) {
    picker.addEventListener("change", () => { if (picker.value) path.value = ""; });
    path.addEventListener("input", () => { if (path.value) picker.value = ""; });
  }
  form.addEventListener("submit", () => {
    const button = document.getElementById("start-run");
    button.disabled = true;
    button.textContent = "Starting…";
    document.getElementById("start-note").textContent = "Loading the model and the data; the run's page opens when it is recorded.";
  });
})();

/* The Compare page: run colours (the charts' palette), the "only differences" switch, overlaid curves with an
   x-axis switch, the flip filters and the expandable long texts. Everything is already on the page: no request. */
(function () {
  "use strict";

  function paintRuns() {
    document.querySelectorAll("[data-run-index]").forEach(chip => {
      const swatch = chip.querySelector(".swatch");
      if (swatch) swatch.style.background = tunelab.PALETTE[Number(chip.dataset.runIndex) % tunelab.PALETTE.length];
    });
  }

  function differencesSwitch() {
    const box = document.getElementById("only-differences");
    const table = document.querySelector(".config-diff");
    if (!box || !table) return;
    const apply = () => table.classList.toggle("only-differences", box.checked);
    box.addEventListener("change", apply);
    apply();
  }

  function hasColumn(runs, column) {
    return runs.some(run => run.rows.some(row => typeof row[column] === "number"));
  }

  function curves() {
    const source = document.getElementById("compare-curves");
    if (!source) return;
    const runs = JSON.parse(source.textContent);
    const loss = tunelab.chart(document.getElementById("loss-chart"), runs,
                               {x: "step", metrics: ["loss", "val_loss"], y: "loss"});
    const rate = tunelab.chart(document.getElementById("lr-chart"), runs,
                               {x: "step", metrics: ["learning_rate"], y: "learning rate"});
    const buttons = document.querySelectorAll("#x-axis button");
    buttons.forEach(button => {
      if (button.dataset.x !== "step" && !hasColumn(runs, button.dataset.x)) {
        button.disabled = true;
        button.title = "these runs did not log " + button.dataset.x;
      }
      button.addEventListener("click", () => {
        buttons.forEach(b => b.classList.toggle("on", b === button));
        [loss, rate].forEach(chart => { chart.options.x = button.dataset.x; chart.update(runs); });
      });
    });
    window.tunelabCompare = {runs, loss, rate};
  }

  function flipFilters() {
    document.querySelectorAll(".flips").forEach(section => {
      const table = section.querySelector(".flip-table");
      const buttons = section.querySelectorAll(".flip-filter button");
      buttons.forEach(button => button.addEventListener("click", () => {
        table.dataset.show = button.dataset.show;
        buttons.forEach(b => b.classList.toggle("on", b === button));
      }));
    });
  }

  /* a "more" button under each text cut at four lines */
  function expandableTexts() {
    document.querySelectorAll(".clamp").forEach(box => {
      if (box.scrollHeight <= box.clientHeight + 1) return;
      const more = document.createElement("button");
      more.type = "button";
      more.className = "clamp-toggle";
      more.textContent = "more";
      more.addEventListener("click", () => { more.textContent = box.classList.toggle("open") ? "less" : "more"; });
      box.after(more);
    });
  }

  /* the picker: Compare is enabled from two ticked runs */
  function picker() {
    const form = document.getElementById("compare-pick");
    if (!form) return;
    const button = document.getElementById("compare-picked");
    const count = document.getElementById("picked-count");
    const update = () => {
      const ticked = form.querySelectorAll("input[name=runs]:checked").length;
      button.disabled = ticked < 2;
      count.textContent = ticked + " selected" + (ticked < 2 ? ": tick at least two" : "");
    };
    form.addEventListener("change", update);
    update();
  }

  paintRuns();
  differencesSwitch();
  curves();
  flipFilters();
  expandableTexts();
  picker();
})();

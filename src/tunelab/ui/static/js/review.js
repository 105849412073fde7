/* Blind review: keys 1/2/3 (or left/down/right arrows) press "A is better", "Tie", "B is better"; a choice is
   sent once, however fast the keys or clicks come. */
(function () {
  "use strict";
  const form = document.getElementById("review-choices");
  if (!form) return;

  form.addEventListener("submit", e => {
    if (form.dataset.sent) { e.preventDefault(); return; }
    form.dataset.sent = "1";
    form.classList.add("sending");
  });

  document.addEventListener("keydown", e => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.repeat) return;
    if (e.target.closest && e.target.closest("input, textarea, select, [contenteditable]")) return;
    const button = [...form.querySelectorAll("button[data-keys]")].find(b => b.dataset.keys.split(" ").includes(e.key));
    if (!button) return;
    e.preventDefault();
    form.requestSubmit(button);
  });
})();

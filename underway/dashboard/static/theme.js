/* Runs before the first paint (a blocking script in <head>), so a chosen theme never flashes. */
(() => {
  "use strict";
  try {
    const chosen = localStorage.getItem("underway.theme");
    if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
  } catch {
    // Storage can be off (private windows, strict settings): the system theme applies.
  }
})();

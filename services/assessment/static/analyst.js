// The analyst pages' keyboard, image toggles and lease heartbeat. Served from our own origin
// (/analyst/static/analyst.js); every page works without it (forms, access keys).
(function () {
  "use strict";
  var workspace = document.getElementById("workspace");

  // -- images: show/hide one at a time, play an animation only when asked ------------------
  function toggle(img, button) {
    var veiled = img.classList.toggle("veiled");
    if (button) {
      button.textContent = veiled ? "show" : "hide";
      button.setAttribute("aria-pressed", String(!veiled));
    }
  }
  document.querySelectorAll("button.toggle").forEach(function (button) {
    var img = document.getElementById(button.dataset.target);
    button.hidden = false;
    button.addEventListener("click", function () { toggle(img, button); });
  });
  function play(link) {
    var img = document.getElementById(link.dataset.target);
    if (img && img.src.indexOf("animate=1") < 0) { img.src = link.href; }
    link.textContent = "playing";
  }
  document.querySelectorAll("a.animate").forEach(function (link) {
    link.addEventListener("click", function (event) { event.preventDefault(); play(link); });
  });

  var figures = Array.prototype.slice.call(document.querySelectorAll("figure.live"));
  var current = 0;
  function select(i) {
    if (!figures.length) { return; }
    figures[current].classList.remove("current");
    current = (i + figures.length) % figures.length;
    figures[current].classList.add("current");
    figures[current].scrollIntoView({block: "nearest"});
  }

  // -- the decision, with a short undo window ---------------------------------------------
  var pending = null;
  var undoSeconds = workspace ? parseFloat(workspace.dataset.undoSeconds || "0") : 0;
  function banner(text) {
    var box = document.getElementById("pending-decision");
    if (!box) {
      box = document.createElement("div");
      box.id = "pending-decision";
      box.setAttribute("role", "status");
      document.body.appendChild(box);
    }
    box.textContent = text;
    box.hidden = !text;
  }
  function submit(form) {
    pending = null;
    banner("recording…");
    if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
  }
  function record(form) {
    if (!form) { return; }
    if (!form.checkValidity()) { form.reportValidity(); return; }
    if (undoSeconds <= 0) { submit(form); return; }
    var chosen = form.querySelector("input[type=radio]:checked");
    var label = chosen && chosen.parentElement ? chosen.parentElement.textContent.trim() : "decision";
    banner("Recording “" + label.split("(")[0].trim() + "” in " + undoSeconds + " s: u to undo, Enter to record now");
    pending = {form: form, timer: setTimeout(function () { submit(form); }, undoSeconds * 1000)};
  }
  function undo() {
    if (!pending) { return false; }
    clearTimeout(pending.timer);
    pending = null;
    banner("Undone: nothing was recorded.");
    return true;
  }
  function check(id) {
    var input = document.getElementById(id);
    if (input) { input.checked = true; input.focus({preventScroll: true}); input.blur(); }
  }
  function click(id) {
    var el = document.getElementById(id);
    if (el) { el.click(); }
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) { return; }
    var target = event.target;
    var typing = target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && target.type !== "radio" && target.type !== "checkbox"));
    if (typing) {
      if (event.key === "Escape") { target.blur(); }
      return;
    }
    var decision = document.getElementById("decision") || document.getElementById("second-opinion");
    var handled = true;
    switch (event.key) {
      case "j": case "ArrowRight": select(current + 1); break;
      case "k": case "ArrowLeft": select(current - 1); break;
      case "s": case " ": {
        var fig = figures[current];
        if (fig) { toggle(fig.querySelector("img"), fig.querySelector("button.toggle")); } else { handled = false; }
        break;
      }
      case "p": {
        var link = figures[current] && figures[current].querySelector("a.animate");
        if (link) { play(link); } else { handled = false; }
        break;
      }
      case "i": check("verdict-illegal"); break;
      case "n": check("verdict-not-illegal"); break;
      case "1": check("category-baseline"); break;
      case "2": check("category-national"); break;
      case "c": check("opinion-confirm"); break;
      case "r": check("opinion-disagree"); break;
      case "d": record(decision); break;
      case "Enter":
        if (pending) { clearTimeout(pending.timer); submit(pending.form); } else { handled = false; }
        break;
      case "u": if (!undo()) { handled = false; } break;
      case "x": click("next"); break;
      case "q": window.location.href = "/analyst"; break;
      case "Escape": undo(); break;
      default: handled = false;
    }
    if (handled) { event.preventDefault(); }
  });

  // -- the lease: renewed while the page is open --------------------------------------------
  if (workspace && workspace.dataset.leaseUrl) {
    var every = Math.max(1, parseFloat(workspace.dataset.heartbeat || "60")) * 1000;
    var lost = false;
    setInterval(function () {
      if (lost) { return; }
      fetch(workspace.dataset.leaseUrl, {method: "POST", credentials: "same-origin"}).then(function (r) {
        if (r.status === 409) {
          lost = true;
          banner("You no longer hold this item (the lease ran out and someone else took it): take the next one.");
        }
      }).catch(function () { /* offline for a moment: the next beat tries again */ });
    }, every);
  }
})();

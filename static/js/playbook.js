/* Playbook's small amount of JavaScript: keyboard shortcuts, toasts, upload progress and the
   chat's scrolling. Everything also works without it (plain forms and links); HTMX does the
   requests. No inline scripts anywhere: the Content-Security-Policy forbids them. */
(function () {
  "use strict";

  // ------------------------------------------------------------------ toasts
  function toast(message, kind) {
    var box = document.getElementById("toasts");
    if (!box || !message) return;
    var item = document.createElement("div");
    item.className = "toast" + (kind ? " " + kind : "");
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    item.textContent = message;
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, kind === "error" ? 8000 : 4500);
  }

  document.body.addEventListener("toast", function (event) {
    var detail = event.detail || {};
    toast(detail.message || detail.value, detail.kind);
  });

  document.body.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    // The server said what was wrong in its own toast (HX-Trigger): show only that one.
    if (xhr && /"toast"/.test(xhr.getResponseHeader("HX-Trigger") || "")) return;
    var status = xhr ? xhr.status : 0;
    var messages = {
      401: "Your session has ended. Reload the page to sign in again.",
      403: "You do not have access to that any more. Reload the page.",
      404: "That is no longer here. Reload the page to see what changed.",
      429: "Too many requests; wait a moment and try again."
    };
    toast(messages[status] || "Something went wrong (" + status + "). Nothing was lost; try again.", "error");
  });

  document.body.addEventListener("htmx:sendError", function () {
    toast("The server cannot be reached. Check your connection; nothing was sent.", "error");
  });

  // A "Dismiss" button removes the element it names.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-dismiss]");
    if (!button) return;
    var target = document.querySelector(button.getAttribute("data-dismiss"));
    if (target) target.remove();
  });

  // ------------------------------------------------------------------ keyboard shortcuts
  function typing(element) {
    if (!element) return false;
    var tag = element.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || element.isContentEditable;
  }

  function drafts() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-draft]"));
  }

  function currentDraft() {
    var all = drafts();
    var current = all.filter(function (d) { return d.getAttribute("aria-current") === "true"; })[0];
    if (!current && all.length) {
      current = all[0];
      current.setAttribute("aria-current", "true");
    }
    return current || null;
  }

  function selectDraft(draft, focus) {
    drafts().forEach(function (d) { d.removeAttribute("aria-current"); });
    if (!draft) return;
    draft.setAttribute("aria-current", "true");
    if (focus) {
      draft.focus({ preventScroll: true });
      draft.scrollIntoView({ block: "nearest", behavior: "smooth" });
    }
  }

  function moveSelection(step) {
    var all = drafts();
    if (!all.length) return;
    var index = all.indexOf(currentDraft());
    selectDraft(all[Math.max(0, Math.min(all.length - 1, index + step))], true);
  }

  function openEditor(draft, name) {
    var details = draft && draft.querySelector('details[data-editor="' + name + '"]');
    if (!details) return;
    draft.querySelectorAll("details[data-editor]").forEach(function (d) {
      if (d !== details) d.open = false;
    });
    details.open = true;
    var field = details.querySelector("textarea");
    if (field) {
      field.focus();
      field.setSelectionRange(field.value.length, field.value.length);
    }
  }

  var pendingG = false;
  var shortcutsDialog = document.getElementById("shortcuts");

  document.addEventListener("keydown", function (event) {
    var active = document.activeElement;
    // Ctrl/Cmd+Enter sends the form being written in.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && active && active.form) {
      event.preventDefault();
      active.form.requestSubmit();
      return;
    }
    if (event.key === "Escape") {
      var open = active && active.closest && active.closest("details[open]");
      if (open) {
        open.open = false;
        var draft = open.closest("[data-draft]");
        if (draft) draft.focus();
      }
      return;
    }
    if (typing(active) || event.ctrlKey || event.metaKey || event.altKey) return;

    if (pendingG) {
      pendingG = false;
      var targets = { q: "/app/", c: "/app/conversations/", p: "/app/playbook/" };
      if (targets[event.key] && document.querySelector(".sidebar")) {
        window.location.assign(targets[event.key]);
        return;
      }
    }
    if (event.key === "g") { pendingG = true; setTimeout(function () { pendingG = false; }, 1200); return; }
    if (event.key === "?" && shortcutsDialog) {
      event.preventDefault();
      shortcutsDialog.showModal();
      return;
    }
    if (!document.querySelector("[data-queue]")) return;
    var current = currentDraft();
    switch (event.key) {
      case "j": moveSelection(1); break;
      case "k": moveSelection(-1); break;
      case "a":
        if (current) {
          var approve = current.querySelector('[data-shortcut="a"]');
          if (approve) { event.preventDefault(); approve.click(); }
        }
        break;
      case "e": event.preventDefault(); openEditor(current, "edit"); break;
      case "o": event.preventDefault(); openEditor(current, "override"); break;
      case "r": event.preventDefault(); openEditor(current, "reject"); break;
      default: return;
    }
  });

  // Opening an editor (by click or shortcut) puts the cursor in it and closes the others.
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (!details.matches || !details.matches("details[data-editor]") || !details.open) return;
    var draft = details.closest("[data-draft]");
    if (draft) {
      draft.querySelectorAll("details[data-editor]").forEach(function (d) {
        if (d !== details) d.open = false;
      });
    }
    var field = details.querySelector("textarea");
    if (field && document.activeElement !== field) {
      field.focus();
      field.setSelectionRange(field.value.length, field.value.length);
    }
  }, true);

  // Clicking into a draft selects it.
  document.addEventListener("focusin", function (event) {
    var draft = event.target.closest && event.target.closest("[data-draft]");
    if (draft && draft.getAttribute("aria-current") !== "true") selectDraft(draft, false);
  });

  // When the selected draft leaves the queue, select the next one.
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && target.matches && target.matches("[data-draft][aria-current='true']")) {
      var all = drafts();
      var index = all.indexOf(target);
      var next = all[index + 1] || all[index - 1];
      if (next) {
        setTimeout(function () { selectDraft(next, document.activeElement === document.body || !document.activeElement); }, 0);
      }
    }
  });

  // ------------------------------------------------------------------ uploads
  document.body.addEventListener("htmx:xhr:progress", function (event) {
    var form = event.target.closest && event.target.closest("form[data-upload]");
    if (!form || !event.detail.lengthComputable) return;
    var bar = form.querySelector(".upload-progress progress");
    var label = form.querySelector(".upload-progress .pct");
    var percent = Math.round((event.detail.loaded / event.detail.total) * 100);
    if (bar) bar.value = percent;
    if (label) label.textContent = "Uploading… " + percent + "%";
  });

  document.querySelectorAll(".dropzone").forEach(function (zone) {
    var input = zone.querySelector('input[type="file"]');
    if (!input) return;
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("dragging"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) {
        input.files = event.dataTransfer.files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
    });
  });

  // After a successful HTMX form post that asks for it, clear the form.
  document.body.addEventListener("htmx:afterRequest", function (event) {
    var form = event.target;
    if (form && form.matches && form.matches("form[data-reset-on-success]") && event.detail.successful) {
      form.reset();
      var field = form.querySelector("textarea, input:not([type=hidden])");
      if (field) field.focus();
    }
  });

  // ------------------------------------------------------------------ chat
  function scrollThread() {
    var thread = document.querySelector("[data-thread]");
    if (thread) thread.scrollTop = thread.scrollHeight;
  }
  scrollThread();
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.target && event.target.closest && event.target.closest("[data-thread]")) scrollThread();
  });
  document.body.addEventListener("htmx:oobAfterSwap", function (event) {
    if (event.target && event.target.closest && event.target.closest("[data-thread]")) scrollThread();
  });

  // In the chat composer, Enter sends and Shift+Enter starts a new line.
  document.addEventListener("keydown", function (event) {
    var field = event.target;
    if (!field.matches || !field.matches("textarea[data-enter-sends]")) return;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (field.value.trim()) field.form.requestSubmit();
    }
  });

  // Composer textareas grow with their text.
  document.addEventListener("input", function (event) {
    var field = event.target;
    if (!field.matches || !field.matches("textarea[data-autogrow]")) return;
    field.style.height = "auto";
    field.style.height = Math.min(field.scrollHeight + 2, 192) + "px";
  });
})();

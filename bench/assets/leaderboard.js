// Sortable leaderboard tables. Each sortable <th> carries data-col (its column), data-type
// ("text" or "number") and data-default (the first direction: best first for metrics); the cells
// carry data-sort (the raw value, empty when absent). Absent values stay at the bottom either
// way; ties keep the file's order (data-order). The tables read in full without this script.
(function () {
  'use strict';

  function value(row, col, type) {
    var cell = row.cells[col];
    if (!cell) return null;
    var raw = cell.getAttribute('data-sort');
    if (raw === null) raw = cell.textContent.trim();
    if (type === 'text') return raw;
    if (raw === '') return null;
    var v = parseFloat(raw);
    return isFinite(v) ? v : null;
  }

  function sortBy(table, th, direction) {
    var col = parseInt(th.getAttribute('data-col'), 10);
    var type = th.getAttribute('data-type');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var sign = direction === 'ascending' ? 1 : -1;
    rows.sort(function (a, b) {
      var va = value(a, col, type);
      var vb = value(b, col, type);
      var order = parseInt(a.getAttribute('data-order'), 10) - parseInt(b.getAttribute('data-order'), 10);
      if (va === null && vb === null) return order;
      if (va === null) return 1;
      if (vb === null) return -1;
      var c = type === 'text'
        ? va.localeCompare(vb, undefined, { numeric: true, sensitivity: 'base' })
        : va - vb;
      return c !== 0 ? sign * c : order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll('th[aria-sort]').forEach(function (h) {
      h.setAttribute('aria-sort', h === th ? direction : 'none');
    });
    var status = table.closest('.table-wrap').nextElementSibling;
    if (status && status.classList.contains('sort-status')) {
      status.textContent = 'Sorted by ' + th.textContent.trim() + ', ' + direction + '.';
    }
  }

  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th[data-col]').forEach(function (th) {
      var button = th.querySelector('button');
      if (!button) return;
      button.addEventListener('click', function () {
        var current = th.getAttribute('aria-sort');
        var next;
        if (current === 'ascending') next = 'descending';
        else if (current === 'descending') next = 'ascending';
        else next = th.getAttribute('data-default') || 'ascending';
        sortBy(table, th, next);
      });
    });
  });

  // Thumbnails that fail to load say so instead of showing a broken-image icon.
  document.querySelectorAll('.grid img').forEach(function (img) {
    function broken() {
      var box = document.createElement('div');
      box.className = 'missing';
      box.setAttribute('role', 'img');
      box.setAttribute('aria-label', 'Image missing');
      box.textContent = 'missing';
      img.replaceWith(box);
    }
    if (img.complete && img.naturalWidth === 0 && img.getAttribute('src')) broken();
    else img.addEventListener('error', broken);
  });
})();

// Step 6 of the demo integration: what this run did, for the integration's run history.
// Amounts are summed in cents so the totals add up exactly.

const cents = (amount) => Math.round(amount * 100);

function addTo(totals, key, fields, amountCents) {
  const entry = totals.get(key) ?? { ...fields, orders: 0, cents: 0 };
  entry.orders += 1;
  entry.cents += amountCents;
  totals.set(key, entry);
}

// [{...fields, orders, total}] from a Map of {..., cents}, largest total first.
function ranked(totals) {
  return [...totals.values()]
    .sort((a, b) => b.cents - a.cents)
    .map(({ cents: amount, ...entry }) => ({ ...entry, total: amount / 100 }));
}

module.exports = async (context) => {
  const { baseCurrency, orders } = context.steps.transform;
  const { valid, invalid } = context.steps.validate;
  const request = context.steps.send_orders;

  const byCurrency = new Map();
  const byCustomer = new Map();
  let grandTotalCents = 0;
  for (const order of valid) {
    addTo(byCurrency, order.currency, { currency: order.currency }, cents(order.total));
    const { id, name } = order.customer;
    addTo(byCustomer, id, { id, name }, cents(order.totalInBase));
    grandTotalCents += cents(order.totalInBase);
  }
  const days = valid.map((order) => order.placedOn).sort();
  const grandTotal = grandTotalCents / 100;
  console.log(
    `${valid.length} orders worth ${grandTotal.toFixed(2)} ${baseCurrency} ` +
      `${request.sent ? "sent" : "ready to send"}, ` +
      `${invalid.length} skipped`,
  );
  return {
    orders: { received: orders.length, valid: valid.length, invalid: invalid.length },
    period: { from: days[0] ?? null, to: days[days.length - 1] ?? null },
    grandTotal: { currency: baseCurrency, amount: grandTotal },
    totalsByCurrency: ranked(byCurrency),
    topCustomers: ranked(byCustomer).slice(0, 5),
    invalidOrders: invalid.map((entry) => ({ id: entry.id, problems: entry.problems })),
    request: { method: request.method, url: request.url, bodyBytes: request.bodyBytes },
    partnerResponse: request.sent ? { status: request.status, ...request.response } : null,
  };
};

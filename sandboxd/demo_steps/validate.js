// Step 4 of the demo integration: check each order before it is sent.
// Invalid orders are reported (and skipped by the next step), never thrown: one bad record must
// not fail the whole batch.

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

function lineProblems(line, index) {
  const problems = [];
  if (!line.sku) problems.push(`line ${index + 1}: missing sku`);
  if (!Number.isInteger(line.quantity) || line.quantity <= 0) {
    problems.push(`line ${index + 1}: quantity ${line.quantity} is not a positive integer`);
  }
  if (line.unitPrice === null || line.unitPrice < 0) {
    problems.push(`line ${index + 1}: invalid unit price`);
  }
  return problems;
}

function problemsOf(order, rates) {
  const problems = [];
  if (!order.id) problems.push("missing order id");
  if (!order.customer.id) problems.push("missing customer id");
  if (!order.customer.name) problems.push("missing customer name");
  if (!EMAIL.test(order.customer.email)) {
    problems.push(`invalid customer email ${JSON.stringify(order.customer.email)}`);
  }
  if (!order.placedOn) problems.push(`unrecognised order date ${JSON.stringify(order.rawPlacedAt)}`);
  if (!Object.hasOwn(rates, order.currency)) {
    problems.push(`no exchange rate for currency ${JSON.stringify(order.currency)}`);
  }
  if (order.lines.length === 0) problems.push("no line items");
  order.lines.forEach((line, index) => problems.push(...lineProblems(line, index)));
  return problems;
}

module.exports = async (context) => {
  const { orders, rates } = context.steps.transform;
  const valid = [];
  const invalid = [];
  for (const order of orders) {
    const problems = problemsOf(order, rates);
    if (problems.length === 0) valid.push(order);
    else invalid.push({ id: order.id, customerId: order.customer.id, problems });
  }
  console.log(`${valid.length} of ${orders.length} orders are valid`);
  if (invalid.length > 0) {
    const sample = invalid.slice(0, 3).map((entry) => `${entry.id}: ${entry.problems[0]}`);
    context.logger.warn(`skipping ${invalid.length} invalid orders, e.g. ${sample.join("; ")}`);
  }
  return { checked: orders.length, valid, invalid };
};

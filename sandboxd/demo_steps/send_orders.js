// Step 5 of the demo integration: send the valid orders to the partner's bulk order API.
// The token comes from the stored credentials and goes only into the Authorization header:
// it is never logged (the logged headers are redacted). With configVars.delivery "prepare" the
// step only builds the request (for runs without network, such as the benchmarks).

function orderPayload(order) {
  return {
    externalId: order.id,
    orderDate: order.placedOn,
    placedAt: order.placedAt,
    customer: {
      externalId: order.customer.id,
      name: order.customer.name,
      email: order.customer.email,
      country: order.customer.country,
    },
    lines: order.lines.map((line) => ({
      sku: line.sku,
      description: line.description,
      quantity: line.quantity,
      unitPrice: line.unitPrice,
    })),
    currency: order.currency,
    total: order.total,
    totalInBaseCurrency: order.totalInBase,
  };
}

module.exports = async (context) => {
  const { endpoint, baseCurrency } = context.configVars;
  const token = context.credentials.apiToken;
  if (!endpoint) throw new Error("configVars.endpoint is not set");
  if (!token) throw new Error("credentials.apiToken is not set");

  const { valid } = context.steps.validate;
  const body = JSON.stringify({
    source: "acme-erp",
    baseCurrency,
    orders: valid.map(orderPayload),
  });
  const headers = {
    Accept: "application/json",
    Authorization: `Bearer ${token}`,
    "Content-Type": "application/json; charset=utf-8",
    "Idempotency-Key": `orders-${context.steps.fetch.fingerprint}`,
    "User-Agent": "acme-orders-sync/1.4",
  };
  const bodyBytes = Buffer.byteLength(body, "utf8");
  console.log(`POST ${endpoint}: ${valid.length} orders, ${bodyBytes} bytes`);
  context.logger.debug(`headers: ${JSON.stringify({ ...headers, Authorization: "Bearer ***" })}`);
  const request = { method: "POST", url: endpoint, bodyBytes };
  if (context.configVars.delivery === "prepare") return { ...request, sent: false };
  const response = await fetch(endpoint, { method: "POST", headers, body });
  const answer = await response.json();
  if (!response.ok) throw new Error(`POST ${endpoint}: ${response.status} ${answer.error}`);
  console.log(`partner answered ${response.status}: batch ${answer.batchId}`);
  return { ...request, sent: true, status: response.status, response: answer };
};

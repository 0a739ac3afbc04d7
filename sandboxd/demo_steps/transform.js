// Step 3 of the demo integration: normalise the parsed orders.
// Numbers from text, amounts in cents (no float drift), dates from the three formats the ERP
// writes, and each order's total converted to the base currency with the configured rates.
// Written as an ES module, to show that `export default` steps work as well as CommonJS ones.

const asArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
const text = (value) => (typeof value === "string" ? value.trim() : "");

function toCents(value) {
  const number = Number(text(value));
  return text(value) !== "" && Number.isFinite(number) ? Math.round(number * 100) : null;
}

const fromCents = (cents) => (cents === null ? null : cents / 100);

// A calendar date as "YYYY-MM-DD", or null when the day does not exist (31.02.2024).
function isoDate(year, month, day) {
  const date = new Date(Date.UTC(Number(year), Number(month) - 1, Number(day)));
  const valid =
    date.getUTCFullYear() === Number(year) &&
    date.getUTCMonth() === Number(month) - 1 &&
    date.getUTCDate() === Number(day);
  return valid ? date.toISOString().slice(0, 10) : null;
}

// {placedOn: "YYYY-MM-DD" | null, placedAt: ISO instant in UTC | null}
function normaliseDate(raw) {
  const value = text(raw);
  let parts;
  if ((parts = /^(\d{4})-(\d{2})-(\d{2})T\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:\d{2})$/.exec(value))) {
    const instant = new Date(value);
    if (Number.isNaN(instant.getTime()) || !isoDate(parts[1], parts[2], parts[3])) {
      return { placedOn: null, placedAt: null };
    }
    return { placedOn: instant.toISOString().slice(0, 10), placedAt: instant.toISOString() };
  }
  if ((parts = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value))) {
    return { placedOn: isoDate(parts[1], parts[2], parts[3]), placedAt: null };
  }
  if ((parts = /^(\d{2})\.(\d{2})\.(\d{4})$/.exec(value))) {
    return { placedOn: isoDate(parts[3], parts[2], parts[1]), placedAt: null };
  }
  return { placedOn: null, placedAt: null };
}

function normaliseLine(line) {
  const quantity = Number(text(line["@quantity"]));
  const unitCents = toCents(line.unitPrice);
  const lineCents = unitCents === null ? null : unitCents * quantity;
  return {
    sku: text(line["@sku"]),
    description: text(line.description),
    quantity,
    unitPrice: fromCents(unitCents),
    total: fromCents(lineCents),
    cents: lineCents,
  };
}

function normaliseOrder(order, rates) {
  const customer = order.customer ?? {};
  const lines = asArray(order.lines?.line).map(normaliseLine);
  const subtotalCents = lines.reduce((sum, line) => sum + (line.cents ?? 0), 0);
  const totalCents = subtotalCents + (toCents(order.shipping) ?? 0);
  const currency = text(order.currency).toUpperCase();
  const rate = Object.hasOwn(rates, currency) ? rates[currency] : null;
  return {
    id: text(order["@id"]),
    status: text(order["@status"]),
    rawPlacedAt: text(order.placedAt),
    ...normaliseDate(order.placedAt),
    currency,
    customer: {
      id: text(customer["@id"]),
      name: text(customer.name),
      email: text(customer.email).toLowerCase(),
      country: text(customer.country).toUpperCase(),
    },
    lines: lines.map(({ cents, ...line }) => line),
    subtotal: fromCents(subtotalCents),
    shipping: fromCents(toCents(order.shipping) ?? 0),
    total: fromCents(totalCents),
    totalInBase: rate === null ? null : Math.round(totalCents * rate) / 100,
  };
}

export default async (context) => {
  const rates = JSON.parse(context.configVars.exchangeRates);
  const baseCurrency = context.configVars.baseCurrency;
  const orders = context.steps.parse.orders.map((order) => normaliseOrder(order, rates));
  context.logger.info(
    `normalised ${orders.length} orders; totals converted to ${baseCurrency} ` +
      `with ${Object.keys(rates).length} exchange rates`,
  );
  return { baseCurrency, rates, orders };
};

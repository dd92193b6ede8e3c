package order

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/text/currency"
)

// Money is an amount in a currency's minor units: cents of EUR, yen of JPY
// (which has no smaller unit), fils of KWD (thousandths of a dinar). How
// many minor units make a major one depends on the currency (Scale), so
// Money means nothing without its currency: see Amount.
type Money int64

// Decimal is an amount in a currency's major unit as a client writes it:
// digits with an optional fraction, such as "19.99" or "1000". In JSON it
// is a string or a number, read exactly (no float rounding); null is the
// empty Decimal. How many fractional digits it may have depends on the
// currency, which may come after the value in a JSON object:
// DecimalAmount.Parse converts it to Money once both are known.
type Decimal string

var decimalPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// UnmarshalJSON reads "19.99" or 19.99, refusing a sign, an exponent and
// anything else that is not plain decimal digits.
func (d *Decimal) UnmarshalJSON(b []byte) error {
	s := string(bytes.TrimSpace(b))
	if s == "null" {
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("decimal amount: %w", err)
		}
	}
	if !decimalPattern.MatchString(s) {
		return fmt.Errorf("%.40s is not a decimal amount such as 19.99", s)
	}
	*d = Decimal(s)
	return nil
}

// errTooPrecise is the error of a decimal with more fractional digits than
// its currency has.
var errTooPrecise = errors.New("has more fractional digits than the currency")

// minorUnits converts d to minor units of a currency with scale fractional
// digits.
func (d Decimal) minorUnits(scale int) (Money, error) {
	s := string(d)
	if !decimalPattern.MatchString(s) {
		return 0, fmt.Errorf("%.40q is not a decimal amount such as 19.99", s)
	}
	whole, frac, _ := strings.Cut(s, ".")
	if len(frac) > scale {
		return 0, fmt.Errorf("%s: %w (%d)", s, errTooPrecise, scale)
	}
	n, err := strconv.ParseInt(whole+frac+strings.Repeat("0", scale-len(frac)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%.40s is too large: %w", s, err)
	}
	return Money(n), nil
}

// MaxAmount is the largest amount of an order, in major units of its
// currency: 1 000 000 000 euros, yen or dinars.
const MaxAmount = 1_000_000_000

// maxWholeDigits is the number of digits of MaxAmount.
const maxWholeDigits = 10

// Scale returns the number of fractional digits of a currency (its minor
// unit is 10^-scale of its major unit): 2 for EUR, 0 for JPY, 3 for KWD.
// The data is golang.org/x/text/currency's (ISO 4217 codes, with the
// digits CLDR gives them); a code it does not know is an error.
func Scale(code string) (int, error) {
	u, err := currency.ParseISO(code)
	if err != nil {
		return 0, fmt.Errorf("currency %q: %w", code, err)
	}
	scale, _ := currency.Standard.Rounding(u)
	return scale, nil
}

// legacyScale is the scale of every amount before the scale depended on
// the currency: that of a currency code Scale does not know (which could be
// stored then).
const legacyScale = 2

// scaleOrLegacy is Scale, or legacyScale for a code Scale does not know.
func scaleOrLegacy(code string) int {
	if s, err := Scale(code); err == nil {
		return s
	}
	return legacyScale
}

var currencyPattern = regexp.MustCompile(`^[A-Z]{3}$`)

// tender holds the currencies that are legal tender somewhere today.
var tender = sync.OnceValue(func() map[currency.Unit]bool {
	m := map[currency.Unit]bool{}
	for it := currency.Query(); it.Next(); {
		m[it.Unit()] = true
	}
	return m
})

// checkCurrency says what is wrong with a currency code of an order, ""
// when nothing is.
func checkCurrency(code string) string {
	switch {
	case code == "":
		return "is required: a three-letter ISO 4217 code such as EUR"
	case !currencyPattern.MatchString(code):
		return "must be a three-letter ISO 4217 code in capitals, such as EUR"
	}
	u, err := currency.ParseISO(code)
	if err != nil {
		return fmt.Sprintf("is not an ISO 4217 currency code: %s", code)
	}
	if !tender()[u] {
		return fmt.Sprintf("must be a currency in use: %s is not legal tender anywhere", code)
	}
	return ""
}

// Amount is a sum of money: Value minor units of Currency, an ISO 4217
// code. In JSON the value is a decimal string in the currency's major
// unit, with as many fractional digits as the currency has:
// {"value": "19.99", "currency": "EUR"} is 1999 cents, {"value": "1000",
// "currency": "JPY"} 1000 yen, {"value": "1.234", "currency": "KWD"} 1234
// fils.
type Amount struct {
	Value    Money  `json:"value"`
	Currency string `json:"currency"`
}

// Decimal returns the value in the currency's major unit, with all of the
// currency's fractional digits ("19.90" EUR, "1000" JPY, "0.005" KWD).
// A currency Scale does not know gets two.
func (a Amount) Decimal() Decimal {
	scale := scaleOrLegacy(a.Currency)
	u := uint64(a.Value)
	sign := ""
	if a.Value < 0 {
		u, sign = -u, "-"
	}
	digits := strconv.FormatUint(u, 10)
	if scale == 0 {
		return Decimal(sign + digits)
	}
	if len(digits) <= scale {
		digits = strings.Repeat("0", scale-len(digits)+1) + digits
	}
	cut := len(digits) - scale
	return Decimal(sign + digits[:cut] + "." + digits[cut:])
}

// String returns the amount as "19.99 EUR".
func (a Amount) String() string { return string(a.Decimal()) + " " + a.Currency }

// MarshalJSON writes {"value": "19.99", "currency": "EUR"}, the value with
// the currency's scale.
func (a Amount) MarshalJSON() ([]byte, error) {
	return json.Marshal(DecimalAmount{Value: a.Decimal(), Currency: a.Currency})
}

// UnmarshalJSON reads what MarshalJSON writes. It refuses a value with more
// fractional digits than its currency has, and does not check the amount
// otherwise (PlaceRequest.Validate does).
func (a *Amount) UnmarshalJSON(b []byte) error {
	var d DecimalAmount
	if err := json.Unmarshal(b, &d); err != nil {
		return fmt.Errorf("amount: %w", err)
	}
	if d.Value == "" {
		*a = Amount{Currency: d.Currency}
		return nil
	}
	v, err := d.Value.minorUnits(scaleOrLegacy(d.Currency))
	if err != nil {
		return fmt.Errorf("amount in %s: %w", d.Currency, err)
	}
	*a = Amount{Value: v, Currency: d.Currency}
	return nil
}

// check returns what is wrong with an amount in minor units (its value and
// currency), in field order.
func (a Amount) check() []FieldError {
	var errs []FieldError
	currencyFault := checkCurrency(a.Currency)
	valueFault := ""
	if currencyFault == "" {
		scale, _ := Scale(a.Currency)
		valueFault = checkValue(a.Value, a.Currency, scale)
	} else if a.Value <= 0 {
		valueFault = "must be greater than zero"
	}
	if valueFault != "" {
		errs = append(errs, FieldError{"amount.value", valueFault})
	}
	if currencyFault != "" {
		errs = append(errs, FieldError{"amount.currency", currencyFault})
	}
	return errs
}

// DecimalAmount is an amount as a client writes it: a decimal in the
// currency's major unit, and the currency.
type DecimalAmount struct {
	Value    Decimal `json:"value"`
	Currency string  `json:"currency"`
}

// Parse converts a to its currency's minor units and checks it as Validate
// checks an order's amount. It returns what is wrong (the fields named
// "amount.value" and "amount.currency"), the zero Amount with it. A value
// whose currency is not known is checked only for what does not depend on
// the currency's scale.
func (a DecimalAmount) Parse() (Amount, []FieldError) {
	var errs []FieldError
	currencyFault := checkCurrency(a.Currency)
	amount := Amount{Currency: a.Currency}
	switch whole, _, _ := strings.Cut(string(a.Value), "."); {
	case a.Value == "":
		errs = append(errs, FieldError{"amount.value", "is required"})
	case !decimalPattern.MatchString(string(a.Value)):
		errs = append(errs, FieldError{"amount.value", "must be a decimal such as 19.99"})
	case len(strings.TrimLeft(whole, "0")) > maxWholeDigits:
		errs = append(errs, FieldError{"amount.value", tooLarge(a.Currency, currencyFault == "")})
	case currencyFault != "":
	default:
		scale, _ := Scale(a.Currency) // known: checkCurrency passed
		value, err := a.Value.minorUnits(scale)
		fault := ""
		switch {
		case errors.Is(err, errTooPrecise):
			fault = tooPreciseFault(a.Currency, scale)
		case err != nil:
			fault = fmt.Sprintf("cannot be converted to minor units of %s: %v", a.Currency, err)
		default:
			amount.Value = value
			fault = checkValue(value, a.Currency, scale)
		}
		if fault != "" {
			errs = append(errs, FieldError{"amount.value", fault})
		}
	}
	if currencyFault != "" {
		errs = append(errs, FieldError{"amount.currency", currencyFault})
	}
	if len(errs) > 0 {
		return Amount{}, errs
	}
	return amount, nil
}

// checkValue says what is wrong with v minor units of a known currency with
// scale fractional digits, "" when nothing is.
func checkValue(v Money, code string, scale int) string {
	limit := Money(MaxAmount)
	for range scale {
		limit *= 10
	}
	switch {
	case v <= 0:
		return "must be greater than zero"
	case v > limit:
		return tooLarge(code, true)
	}
	return ""
}

// tooPreciseFault is the fault of a value with more fractional digits than
// its currency, which has scale.
func tooPreciseFault(code string, scale int) string {
	if scale == 0 {
		return fmt.Sprintf("must be a whole number: %s has no fractional digits", code)
	}
	return fmt.Sprintf("has too many fractional digits: %s has %d", code, scale)
}

// tooLarge is the fault of a value over MaxAmount.
func tooLarge(code string, known bool) string {
	if !known {
		return fmt.Sprintf("is too large: at most %d", MaxAmount)
	}
	return fmt.Sprintf("is too large: at most %d %s", MaxAmount, code)
}

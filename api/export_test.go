package api

// Routes returns the method and path of every route, from the one list that
// registers them.
func Routes() [][2]string {
	var out [][2]string
	for _, rt := range routeTable() {
		out = append(out, [2]string{rt.method, rt.path})
	}
	return out
}

// RouteAccess returns who may call each route ("METHOD path"): public,
// reader or operator, from the route table.
func RouteAccess() map[string]string {
	out := map[string]string{}
	for _, rt := range routeTable() {
		out[rt.method+" "+rt.path] = map[access]string{public: "public", reader: "reader", operator: "operator"}[rt.access]
	}
	return out
}

//! The types a `?filter=` expression may select from, per answer element, as Consul's structs
//! define them (field names are the wire JSON's): which selectors exist and which operators
//! each field takes (go-bexpr's rules: strings `==`/`!=`/`in`/`matches`, other scalars
//! `==`/`!=`, lists of scalars and maps `in`/`is empty`, lists of structs `is empty` and their
//! elements' fields, structs nothing themselves).

use super::expr::Op;

/// A field type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Str,
    Bool,
    Int,
    /// `[]string`
    StrList,
    /// `map[string]string`
    StrMap,
    /// `map[string][]string`
    StrListMap,
    /// `map[string]T`
    Map(&'static Ty),
    /// `[]T` of structs
    List(&'static Ty),
    Struct(&'static [(&'static str, Ty)]),
}

impl Ty {
    /// The type of selector part `name` below this one.
    pub(crate) fn field(self, name: &str) -> Option<Ty> {
        match self {
            Ty::Struct(fields) => fields.iter().find(|(n, _)| *n == name).map(|(_, t)| *t),
            Ty::List(elem) => elem.field(name),
            Ty::StrMap => Some(Ty::Str),
            Ty::StrListMap => Some(Ty::StrList),
            Ty::Map(value) => Some(*value),
            _ => None,
        }
    }

    pub(crate) fn operations(self) -> &'static [Op] {
        match self {
            Ty::Str => &[
                Op::Equal,
                Op::NotEqual,
                Op::In,
                Op::NotIn,
                Op::Matches,
                Op::NotMatches,
            ],
            Ty::Bool | Ty::Int => &[Op::Equal, Op::NotEqual],
            Ty::StrList => &[Op::In, Op::NotIn, Op::IsEmpty, Op::IsNotEmpty],
            Ty::StrMap | Ty::StrListMap | Ty::Map(_) => {
                &[Op::IsEmpty, Op::IsNotEmpty, Op::In, Op::NotIn]
            }
            Ty::List(_) => &[Op::IsEmpty, Op::IsNotEmpty],
            Ty::Struct(_) => &[],
        }
    }

    /// The type a value compared with this field is converted to.
    pub(crate) fn scalar(self) -> Ty {
        match self {
            Ty::Bool | Ty::Int => self,
            _ => Ty::Str,
        }
    }
}

const SERVICE_ADDRESS: Ty = Ty::Struct(&[("Address", Ty::Str), ("Port", Ty::Int)]);
const WEIGHTS: Ty = Ty::Struct(&[("Passing", Ty::Int), ("Warning", Ty::Int)]);
const MESH_GATEWAY: Ty = Ty::Struct(&[("Mode", Ty::Str)]);
const UPSTREAM: Ty = Ty::Struct(&[
    ("DestinationType", Ty::Str),
    ("DestinationNamespace", Ty::Str),
    ("DestinationPartition", Ty::Str),
    ("DestinationPeer", Ty::Str),
    ("DestinationName", Ty::Str),
    ("Datacenter", Ty::Str),
    ("LocalBindAddress", Ty::Str),
    ("LocalBindPort", Ty::Int),
    ("LocalBindSocketPath", Ty::Str),
    ("LocalBindSocketMode", Ty::Str),
    ("MeshGateway", MESH_GATEWAY),
    ("CentrallyConfigured", Ty::Bool),
]);
const EXPOSE_PATH: Ty = Ty::Struct(&[
    ("ListenerPort", Ty::Int),
    ("Path", Ty::Str),
    ("LocalPathPort", Ty::Int),
    ("Protocol", Ty::Str),
    ("ParsedFromCheck", Ty::Bool),
]);
const PROXY: Ty = Ty::Struct(&[
    ("DestinationServiceName", Ty::Str),
    ("DestinationServiceID", Ty::Str),
    ("LocalServiceAddress", Ty::Str),
    ("LocalServicePort", Ty::Int),
    ("LocalServiceSocketPath", Ty::Str),
    ("Mode", Ty::Str),
    ("Upstreams", Ty::List(&UPSTREAM)),
    ("MeshGateway", MESH_GATEWAY),
    (
        "Expose",
        Ty::Struct(&[("Checks", Ty::Bool), ("Paths", Ty::List(&EXPOSE_PATH))]),
    ),
    (
        "TransparentProxy",
        Ty::Struct(&[
            ("OutboundListenerPort", Ty::Int),
            ("DialedDirectly", Ty::Bool),
        ]),
    ),
]);
const CONNECT: Ty = Ty::Struct(&[("Native", Ty::Bool)]);

/// `structs.Node`: `/v1/catalog/nodes` elements, `Node` of a health entry.
pub(crate) const NODE: Ty = Ty::Struct(&[
    ("ID", Ty::Str),
    ("Node", Ty::Str),
    ("Address", Ty::Str),
    ("Datacenter", Ty::Str),
    ("PeerName", Ty::Str),
    ("TaggedAddresses", Ty::StrMap),
    ("Meta", Ty::StrMap),
]);

/// `structs.NodeService`: `/v1/catalog/node/<n>` services, `Service` of a health entry.
pub(crate) const NODE_SERVICE: Ty = Ty::Struct(NODE_SERVICE_FIELDS);

const NODE_SERVICE_FIELDS: &[(&str, Ty)] = &[
    ("Kind", Ty::Str),
    ("ID", Ty::Str),
    ("Service", Ty::Str),
    ("Tags", Ty::StrList),
    ("Address", Ty::Str),
    ("TaggedAddresses", Ty::Map(&SERVICE_ADDRESS)),
    ("Meta", Ty::StrMap),
    ("Port", Ty::Int),
    ("SocketPath", Ty::Str),
    ("Weights", WEIGHTS),
    ("EnableTagOverride", Ty::Bool),
    ("Proxy", PROXY),
    ("Connect", CONNECT),
    ("PeerName", Ty::Str),
];

/// `api.AgentService`: `/v1/agent/services` values (a `NodeService` with its datacenter).
pub(crate) const AGENT_SERVICE: Ty = Ty::Struct(&[
    ("Kind", Ty::Str),
    ("ID", Ty::Str),
    ("Service", Ty::Str),
    ("Tags", Ty::StrList),
    ("Address", Ty::Str),
    ("TaggedAddresses", Ty::Map(&SERVICE_ADDRESS)),
    ("Meta", Ty::StrMap),
    ("Port", Ty::Int),
    ("SocketPath", Ty::Str),
    ("Weights", WEIGHTS),
    ("EnableTagOverride", Ty::Bool),
    ("Proxy", PROXY),
    ("Connect", CONNECT),
    ("PeerName", Ty::Str),
    ("Datacenter", Ty::Str),
]);

/// `structs.ServiceNode`: `/v1/catalog/service/<s>` elements, and the instances
/// `/v1/catalog/services` is filtered over.
pub(crate) const SERVICE_NODE: Ty = Ty::Struct(&[
    ("ID", Ty::Str),
    ("Node", Ty::Str),
    ("Address", Ty::Str),
    ("Datacenter", Ty::Str),
    ("TaggedAddresses", Ty::StrMap),
    ("NodeMeta", Ty::StrMap),
    ("ServiceKind", Ty::Str),
    ("ServiceID", Ty::Str),
    ("ServiceName", Ty::Str),
    ("ServiceTags", Ty::StrList),
    ("ServiceAddress", Ty::Str),
    ("ServiceTaggedAddresses", Ty::Map(&SERVICE_ADDRESS)),
    ("ServiceWeights", WEIGHTS),
    ("ServiceMeta", Ty::StrMap),
    ("ServicePort", Ty::Int),
    ("ServiceSocketPath", Ty::Str),
    ("ServiceEnableTagOverride", Ty::Bool),
    ("ServiceProxy", PROXY),
    ("ServiceConnect", CONNECT),
    ("PeerName", Ty::Str),
]);

const CHECK_DEFINITION: Ty = Ty::Struct(&[
    ("HTTP", Ty::Str),
    ("TLSServerName", Ty::Str),
    ("TLSSkipVerify", Ty::Bool),
    ("Header", Ty::StrListMap),
    ("Method", Ty::Str),
    ("Body", Ty::Str),
    ("DisableRedirects", Ty::Bool),
    ("TCP", Ty::Str),
    ("TCPUseTLS", Ty::Bool),
    ("UDP", Ty::Str),
    ("H2PING", Ty::Str),
    ("H2PingUseTLS", Ty::Bool),
    ("OSService", Ty::Str),
    ("GRPC", Ty::Str),
    ("GRPCUseTLS", Ty::Bool),
]);

/// `structs.HealthCheck`: `/v1/health/{node,checks,state}` elements, `/v1/agent/checks`
/// values, `Checks` of a health entry.
pub(crate) const HEALTH_CHECK: Ty = Ty::Struct(&[
    ("Node", Ty::Str),
    ("CheckID", Ty::Str),
    ("Name", Ty::Str),
    ("Status", Ty::Str),
    ("Notes", Ty::Str),
    ("Output", Ty::Str),
    ("ServiceID", Ty::Str),
    ("ServiceName", Ty::Str),
    ("ServiceTags", Ty::StrList),
    ("Type", Ty::Str),
    ("ExposedPort", Ty::Int),
    ("PeerName", Ty::Str),
    ("Definition", CHECK_DEFINITION),
]);

/// `structs.CheckServiceNode`: `/v1/health/service/<s>` elements.
pub(crate) const CHECK_SERVICE_NODE: Ty = Ty::Struct(&[
    ("Node", NODE),
    ("Service", NODE_SERVICE),
    ("Checks", Ty::List(&HEALTH_CHECK)),
]);

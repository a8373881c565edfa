"""IKEv2, ESP and IP protocol numbers, named as in IANA's "Internet Key Exchange Version 2
(IKEv2) Parameters" registries, so a name here can be looked up there verbatim.

Every other module takes its numbers from here; none writes a bare protocol number.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

IKE_VERSION = 0x20  # major 2, minor 0 (RFC 7296 3.1)
IKE_HEADER_LEN = 28
GENERIC_PAYLOAD_HEADER_LEN = 4
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2
IKE_PORT = 500
NATT_PORT = 4500


class ExchangeType(IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38
    IKE_INTERMEDIATE = 43
    IKE_FOLLOWUP_KE = 44


class HeaderFlag(IntFlag):
    NONE = 0
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(IntEnum):
    NO_NEXT_PAYLOAD = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    GSPM = 49
    SKF = 53


class ProtocolId(IntEnum):
    """Security Protocol Identifier (proposal, notify, delete)."""

    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    KE = 4  # "Diffie-Hellman Group (D-H)" before RFC 9370
    ESN = 5
    ADDKE1 = 6
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


class EncrId(IntEnum):
    ENCR_3DES = 3
    ENCR_NULL = 11
    ENCR_AES_CBC = 12
    ENCR_AES_CTR = 13
    ENCR_AES_CCM_8 = 14
    ENCR_AES_CCM_12 = 15
    ENCR_AES_CCM_16 = 16
    ENCR_AES_GCM_8 = 18
    ENCR_AES_GCM_12 = 19
    ENCR_AES_GCM_16 = 20
    ENCR_NULL_AUTH_AES_GMAC = 21
    ENCR_CHACHA20_POLY1305 = 28


class PrfId(IntEnum):
    PRF_HMAC_MD5 = 1
    PRF_HMAC_SHA1 = 2
    PRF_AES128_XCBC = 4
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7
    PRF_AES128_CMAC = 8


class IntegId(IntEnum):
    NONE = 0
    AUTH_HMAC_MD5_96 = 1
    AUTH_HMAC_SHA1_96 = 2
    AUTH_AES_XCBC_96 = 5
    AUTH_HMAC_SHA2_256_128 = 12
    AUTH_HMAC_SHA2_384_192 = 13
    AUTH_HMAC_SHA2_512_256 = 14


class KeId(IntEnum):
    """Transform Type 4 - Key Exchange Method Transform IDs (formerly DH groups)."""

    NONE = 0
    MODP_768 = 1
    MODP_1024 = 2
    MODP_1536 = 5
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    MODP_6144 = 17
    MODP_8192 = 18
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31
    CURVE448 = 32
    ML_KEM_512 = 35
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


class TransformAttr(IntEnum):
    KEY_LENGTH = 14


class IdType(IntEnum):
    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    # 4 and 6-8 are unassigned in IKEv2; these are their IKEv1 meanings (RFC 2407 4.6.2.1), which
    # strongSwan keeps for address-pattern identities in configs (never sent by ipsecd)
    ID_IPV4_ADDR_SUBNET = 4
    ID_IPV6_ADDR = 5
    ID_IPV6_ADDR_SUBNET = 6
    ID_IPV4_ADDR_RANGE = 7
    ID_IPV6_ADDR_RANGE = 8
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11
    ID_FC_NAME = 12  # RFC 4595
    ID_NULL = 13  # RFC 7619


class AuthMethod(IntEnum):
    RSA_DIGITAL_SIGNATURE = 1
    SHARED_KEY_MESSAGE_INTEGRITY_CODE = 2
    DSS_DIGITAL_SIGNATURE = 3
    ECDSA_SHA_256_P256 = 9
    ECDSA_SHA_384_P384 = 10
    ECDSA_SHA_512_P521 = 11
    GENERIC_SECURE_PASSWORD = 12
    NULL_AUTHENTICATION = 13
    DIGITAL_SIGNATURE = 14


class HashAlgorithm(IntEnum):
    """IKEv2 Hash Algorithms (RFC 7427), carried in SIGNATURE_HASH_ALGORITHMS."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class TsType(IntEnum):
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class CertEncoding(IntEnum):
    X509_CERTIFICATE_SIGNATURE = 4
    RAW_RSA_KEY = 11
    HASH_AND_URL_X509_CERTIFICATE = 12
    HASH_AND_URL_X509_BUNDLE = 13
    RAW_PUBLIC_KEY = 15


class CfgType(IntEnum):
    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


class ConfigAttribute(IntEnum):
    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
    MIP6_HOME_PREFIX = 16
    INTERNAL_IP6_LINK = 17
    INTERNAL_IP6_PREFIX = 18
    HOME_AGENT_ADDRESS = 19
    P_CSCF_IP4_ADDRESS = 20
    P_CSCF_IP6_ADDRESS = 21
    FTT_KAT = 22
    EXTERNAL_SOURCE_IP4_NAT_INFO = 23
    TIMEOUT_PERIOD_FOR_LIVENESS_CHECK = 24
    INTERNAL_DNS_DOMAIN = 25  # RFC 8598
    INTERNAL_DNSSEC_TA = 26  # RFC 8598


CONFIG_ATTRIBUTE_PRIVATE_USE = range(16384, 32768)  # RFC 7296 3.15.1


class PrivateConfigAttribute(IntEnum):
    """Configuration attributes from the private-use range that clients send in practice.

    Not assigned by IANA: the numbers are the vendors' (and strongSwan's names for them).
    """

    INTERNAL_IP4_SERVER = 23456  # Windows asks for these (its "SRV"); nobody answers them usefully
    INTERNAL_IP6_SERVER = 23457
    UNITY_SPLIT_INCLUDE = 28676  # Cisco Unity: what swanctl's split_include sends
    UNITY_LOCAL_LAN = 28678  # Cisco Unity: what swanctl's split_exclude sends


class NotifyType(IntEnum):
    """IKEv2 Notify Message Types: errors below 16384, status types from 16384."""

    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44

    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    AUTH_LIFETIME = 16403
    MULTIPLE_AUTH_SUPPORTED = 16404
    ANOTHER_AUTH_FOLLOWS = 16405
    REDIRECT_SUPPORTED = 16406
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    TICKET_LT_OPAQUE = 16409
    TICKET_REQUEST = 16410
    TICKET_ACK = 16411
    TICKET_NACK = 16412
    TICKET_OPAQUE = 16413
    LINK_ID = 16414
    USE_WESP_MODE = 16415
    ROHC_SUPPORTED = 16416
    EAP_ONLY_AUTHENTICATION = 16417
    CHILDLESS_IKEV2_SUPPORTED = 16418
    QUICK_CRASH_DETECTION = 16419
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420
    IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED = 16421
    IKEV2_MESSAGE_ID_SYNC = 16422
    IPSEC_REPLAY_COUNTER_SYNC = 16423
    SECURE_PASSWORD_METHODS = 16424
    PSK_PERSIST = 16425
    PSK_CONFIRM = 16426
    ERX_SUPPORTED = 16427
    IFOM_CAPABILITY = 16428
    SENDER_REQUEST_ID = 16429
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431
    CLONE_IKE_SA_SUPPORTED = 16432
    CLONE_IKE_SA = 16433
    PUZZLE = 16434
    USE_PPK = 16435
    PPK_IDENTITY = 16436
    NO_PPK_AUTH = 16437
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438
    IP4_ALLOWED = 16439
    IP6_ALLOWED = 16440
    ADDITIONAL_KEY_EXCHANGE = 16441
    USE_AGGFRAG = 16442
    SUPPORTED_AUTH_METHODS = 16443
    SA_RESOURCE_INFO = 16444


NOTIFY_ERROR_MAX = 16383  # RFC 7296 3.10.1: types below 16384 are errors


def is_error_notify(notify_type: int) -> bool:
    return 0 < notify_type <= NOTIFY_ERROR_MAX


class IpProto(IntEnum):
    """Assigned Internet Protocol Numbers (the subset ipsecd handles by name)."""

    ANY = 0
    HOPOPT = 0
    ICMP = 1
    IPV4 = 4  # IP-in-IP, the next header of an ESP tunnel-mode IPv4 packet
    TCP = 6
    UDP = 17
    IPV6 = 41
    ESP = 50
    AH = 51
    IPV6_ICMP = 58
    NO_NEXT_HEADER = 59
    IPCOMP = 108  # RFC 3173 2.1: the IPComp header's protocol number


class IpcompId(IntEnum):
    """IPCOMP_SUPPORTED Transform IDs (RFC 7296 3.10.1; IANA "IPComp Transform IDs")."""

    IPCOMP_OUI = 1
    IPCOMP_DEFLATE = 2  # RFC 2394
    IPCOMP_LZS = 3
    IPCOMP_LZJH = 4


class EapCode(IntEnum):
    """EAP Codes (RFC 3748 4; IANA "Extensible Authentication Protocol (EAP) Registry")."""

    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(IntEnum):
    """EAP Method Types (RFC 3748 5, IANA "Method Types"), the subset ipsecd knows by name."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3  # Legacy Nak, in responses only
    MD5_CHALLENGE = 4
    TLS = 13  # RFC 5216, RFC 9190
    MSCHAPV2 = 26  # draft-kamath-pppext-eap-mschapv2
    EXPANDED = 254  # RFC 3748 5.7: Vendor-Id (3) + Vendor-Type (4) follow


class RadiusCode(IntEnum):
    """RADIUS Packet Type Codes (RFC 2865 3, RFC 2866 3)."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11


RADIUS_AUTH_PORT = 1812
RADIUS_ACCT_PORT = 1813
VENDOR_MICROSOFT = 311  # SMI Network Management Private Enterprise Code, RFC 2548


class RadiusAttr(IntEnum):
    """RADIUS Attribute Types (RFC 2865 5, RFC 2869, RFC 3579) carried as raw octets by ipsecd."""

    STATE = 24
    CLASS = 25
    VENDOR_SPECIFIC = 26
    EAP_MESSAGE = 79
    MESSAGE_AUTHENTICATOR = 80


class MicrosoftAttr(IntEnum):
    """Microsoft vendor-specific RADIUS attributes (RFC 2548 2.4)."""

    MS_MPPE_SEND_KEY = 16
    MS_MPPE_RECV_KEY = 17


class AcctStatusType(IntEnum):
    """Acct-Status-Type values (RFC 2866 5.1)."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3


class AcctTerminateCause(IntEnum):
    """Acct-Terminate-Cause values (RFC 2866 5.10), the ones an IPsec gateway reports."""

    USER_REQUEST = 1
    LOST_CARRIER = 2
    IDLE_TIMEOUT = 4
    SESSION_TIMEOUT = 5
    ADMIN_RESET = 6
    NAS_ERROR = 9
    NAS_REQUEST = 10
    NAS_REBOOT = 11
